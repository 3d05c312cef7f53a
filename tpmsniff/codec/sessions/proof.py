"""HMAC proof: which key candidate a session's command or response HMAC verifies with.
A candidate that verifies proves the sessionKey (proof=hmac) and, when the HMAC covers
it, the authorised entity's authValue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ...model import TpmInfo
from ..authvalues import CC_HIERARCHY_CHANGE_AUTH, CC_NV_CHANGE_AUTH
from ..paramcrypt import command_hmac, response_hmac
from .handles import DECRYPT, ENCRYPT, authorised_entity
from .keys import Candidate, candidates
from .table import Pending, SessionState, SessionTable


@dataclass(slots=True)
class Check:
    """The outcome of checking one session's HMAC on one message."""

    status: str  # "ok" | "fail" | "none" (nothing to check)
    value: Candidate | None = None
    candidates: list[Candidate] = field(default_factory=list)


def cp_buffer(msg: bytes, nh: int, tag: int) -> bytes:
    off = 10 + 4 * nh
    if tag == 0x8002:
        off += 4 + int.from_bytes(msg[off : off + 4], "big")
    return msg[off:]


def rp_buffer(msg: bytes, nh: int) -> bytes:
    off = 10 + 4 * nh
    psize = int.from_bytes(msg[off : off + 4], "big")
    return msg[off + 4 : off + 4 + psize]


def verify(
    st: SessionState,
    values: list[Candidate],
    mac: bytes,
    compute: Callable[[bytes], bytes] | None,
) -> Check:
    """The first candidate whose HMAC is `mac`; remembers a proven sessionKey in `st`."""
    if not values:
        return Check("fail")
    if not mac or compute is None or st.policy == "password":
        return Check("none", candidates=values)
    for v in values:
        try:
            ok = compute(v.value) == mac
        except Exception:  # a crypto error must not stop annotation
            ok = False
        if ok:
            if st.key is None:
                st.key, st.key_src, st.key_auth = v.key, v.key_src, v.bind_auth
            st.failed = False
            return Check("ok", v, values)
    st.failed = True
    return Check("fail", candidates=values)


def check_command(table: SessionTable, info: TpmInfo, msg: bytes) -> dict[int, Check]:
    """The HMAC check of every tracked session of a command, by session index."""
    out: dict[int, Check] = {}
    cc = info.cc
    names = table.names.names_of(info.handles)
    cp = cp_buffer(msg, len(info.handles), info.tag)
    dec = next((i for i, s in enumerate(info.sessions) if s.attributes & DECRYPT), None)
    enc = next((i for i, s in enumerate(info.sessions) if s.attributes & ENCRYPT), None)
    for i, s in enumerate(info.sessions):
        st = table.sessions.get(s.handle) if s.handle is not None else None
        if st is None or cc is None:
            continue
        extra_nonces = b""
        if i == 0:
            for j in (dec, enc if enc != dec else None):
                if j is not None and j != 0:
                    other = table.sessions.get(info.sessions[j].handle or 0)
                    extra_nonces += other.nonce_tpm if other is not None else b""
        extra = [(s.auth, "PolicyPassword")] if st.policy == "password" and s.auth else None
        values = candidates(table, st, authorised_entity(cc, info.handles, i), extra)
        compute: Callable[[bytes], bytes] | None = None
        if names is not None:
            compute = partial(
                command_hmac,
                st.auth_hash,
                cc=cc,
                names=names,
                cp_buffer=cp,
                nonce_caller=s.nonce,
                nonce_tpm=st.nonce_tpm,
                attrs=s.attributes,
                extra_nonces=extra_nonces,
            )
        out[i] = verify(st, values, s.auth, compute)
    return out


def check_response(
    table: SessionTable, info: TpmInfo, msg: bytes, pend: Pending
) -> dict[int, Check]:
    """The HMAC check of every tracked session of a response, by session index."""
    out: dict[int, Check] = {}
    cmd = pend.info
    cc = cmd.cc
    if cc is None:
        return out
    rp = rp_buffer(msg, len(info.handles))
    extra = new_auth(pend)
    for i, s in enumerate(info.sessions):
        st = table.sessions.get(s.handle) if s.handle is not None else None
        if st is None or i >= len(cmd.sessions):
            continue
        pw = cmd.sessions[i].auth
        more = [(pw, "PolicyPassword")] if st.policy == "password" and pw else []
        values = candidates(table, st, authorised_entity(cc, cmd.handles, i), more + extra)

        compute = partial(
            response_hmac,
            st.auth_hash,
            cc=cc,
            rp_buffer=rp,
            nonce_tpm=s.nonce,
            nonce_caller=cmd.sessions[i].nonce,
            attrs=s.attributes,
        )
        out[i] = verify(st, values, s.auth, compute)
    return out


def new_auth(pend: Pending) -> list[tuple[bytes, str]]:
    """A readable new authValue of this command: the response HMAC may use it."""
    if pend.info.cc not in (CC_HIERARCHY_CHANGE_AUTH, CC_NV_CHANGE_AUTH):
        return []
    return [(r.value, f"{pend.info.name} newAuth") for r in pend.readable if "newAuth" in r.field]
