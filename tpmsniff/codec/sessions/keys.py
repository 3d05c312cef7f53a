"""Key candidates (TPM 2.0 Part 1 §19.6, §21): the sessionKeys and sessionValues an
observer can compute for an unsalted session from the bind entity's and the authorised
entity's authValue candidates (empty, --auth, learned from the capture)."""

from __future__ import annotations

from dataclasses import dataclass

from ..paramcrypt import HASHES, session_key, strip_auth
from .handles import TPM_RH_NULL
from .table import SessionState, SessionTable


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate sessionValue (HMAC key and parameter-encryption key)."""

    value: bytes  # the HMAC key
    enc: bytes  # the parameter-encryption key
    key: bytes
    key_src: str
    auth: tuple[bytes, str] | None  # the entity authValue, if the session authorises one
    auth_in_hmac: bool  # the HMAC covers the authValue too (so a match proves it)
    bind_auth: bytes = b""  # the bind authValue the sessionKey was derived with


def session_keys(table: SessionTable, st: SessionState) -> list[tuple[bytes, str, bytes]]:
    """Candidate (sessionKey, how, bind authValue) an observer can compute (none for a
    salted session)."""
    if st.key is not None:
        return [(st.key, st.key_src, st.key_auth)]
    if st.salted or st.auth_hash not in HASHES:
        return []
    if st.bind == TPM_RH_NULL:
        return [(b"", "unsalted+unbound", b"")]
    out = []
    for auth, src in table.book.candidates(st.bind, st.bind_name):
        key = session_key(st.auth_hash, auth, st.start_tpm, st.start_caller)
        out.append((key, f"bound to 0x{st.bind:08x}, {src} authValue", auth))
    return out


def candidates(
    table: SessionTable,
    st: SessionState,
    entity: int | None,
    extra: list[tuple[bytes, str]] | None = None,
) -> list[Candidate]:
    """Candidate sessionValues for a session authorising `entity` (None: no handle).

    The HMAC key includes the entity's authValue except for its own bind entity and
    for a policy session before PolicyAuthValue; the parameter-encryption key includes
    it whenever the session authorises an entity, bind entity and policy sessions
    included (what the TPM does: measured with swtpm/libtpms, see docs/verdicts.md)."""
    keys = session_keys(table, st)
    if entity is None:
        return [Candidate(k, k, k, src, None, True, b) for k, src, b in keys]
    if table.is_bind(st, entity):  # its authValue is the bind authValue of the key
        return [Candidate(k, k + strip_auth(b), k, src, None, True, b) for k, src, b in keys]
    auths = (extra or []) + table.book.candidates(entity, table.names.name(entity))
    out = []
    policy = st.facts.type == "policy"
    for k, src, b in keys:
        for a, asrc in auths:
            enc = k + strip_auth(a)
            if not policy or st.policy == "authvalue":
                out.append(Candidate(enc, enc, k, src, (a, asrc), True, b))
            if policy:  # before PolicyAuthValue (or after a reset): sessionKey alone
                out.append(Candidate(k, enc, k, src, (a, asrc), False, b))
    if policy and st.policy != "authvalue":  # also try PolicyAuthValue's key
        for k, src, b in keys:
            for a, asrc in auths:
                enc = k + strip_auth(a)
                out.append(Candidate(enc, enc, k, src, (a, asrc), True, b))
    return out
