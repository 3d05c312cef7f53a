"""Session tracking and encryption-strength verdicts (docs/verdicts.md).

Sessions are learned from StartAuthSession (type, salted/bound, symmetric, authHash) and
end on FlushContext or on a successful response to a command that cleared
continueSession. Handles are global on a TPM, so one tracker serves every connection to
one upstream TPM; a session first seen mid-stream is of "unknown" origin. The tracker
also remembers where loaded keys came from, to say what a salt key is.

Derivation (TPM 2.0 Part 1 §19.6, §21): for every session whose salt is absent, the
sessionKey is computed from the bind entity's authValue candidates (empty, --auth,
learned from the capture: `AuthBook`), and sessionValue = sessionKey ‖ authValue of the
authorised entity, except for a session authorising its own bind entity, a session that
authorises no handle (an extra decrypt/encrypt session), and a policy session before
PolicyAuthValue. A candidate is kept when the session's HMAC verifies with it
(proof=hmac); with no HMAC to check (PolicyPassword, names unknown) the first candidate
is used (proof=none) unless a check of this session already failed with every candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import structlog
from tpm2_pytss.constants import TPM2_CC, TPM2_RH

from ..model import TPM_RS_PW, Param, SessionFacts, TpmInfo, Verdict
from .authvalues import (
    CC_CREATE,
    CC_CREATE_LOADED,
    CC_CREATE_PRIMARY,
    CC_HIERARCHY_CHANGE_AUTH,
    CC_NV_CHANGE_AUTH,
    CC_NV_DEFINE,
    CC_OBJECT_CHANGE_AUTH,
    AuthBook,
    Readable,
    readable_values,
    sensitive_auth,
)
from .names import NameBook
from .paramcrypt import (
    ALG_AES,
    ALG_NULL,
    ALG_XOR,
    HASHES,
    command_hmac,
    decrypt_param,
    response_hmac,
    session_key,
    strip_auth,
)

log = structlog.get_logger("tpmsniff.sessions")

TPM_RH_NULL = int(TPM2_RH.NULL)
CONTINUE, DECRYPT, ENCRYPT = 0x01, 0x20, 0x40
CC_START_AUTH_SESSION, CC_FLUSH = TPM2_CC.StartAuthSession, TPM2_CC.FlushContext
CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD = TPM2_CC.Load, TPM2_CC.LoadExternal, TPM2_CC.ContextLoad
CC_POLICY_AUTH_VALUE, CC_POLICY_PASSWORD, CC_POLICY_RESTART = (
    TPM2_CC.PolicyAuthValue,
    TPM2_CC.PolicyPassword,
    TPM2_CC.PolicyRestart,
)
# commands whose handles need no authorization (Part 3 "@" handles), and those with two
ZERO_AUTH = {
    TPM2_CC.ReadPublic,
    TPM2_CC.NV_ReadPublic,
    TPM2_CC.ContextSave,
    TPM2_CC.StartAuthSession,
    TPM2_CC.RSA_Encrypt,
    TPM2_CC.ECDH_KeyGen,
    TPM2_CC.VerifySignature,
    TPM2_CC.MakeCredential,
    TPM2_CC.PolicySigned,
    TPM2_CC.PolicyTicket,
    TPM2_CC.PolicyOR,
    TPM2_CC.PolicyPCR,
    TPM2_CC.PolicyLocality,
    TPM2_CC.PolicyCounterTimer,
    TPM2_CC.PolicyCommandCode,
    TPM2_CC.PolicyPhysicalPresence,
    TPM2_CC.PolicyCpHash,
    TPM2_CC.PolicyNameHash,
    TPM2_CC.PolicyDuplicationSelect,
    TPM2_CC.PolicyAuthorize,
    TPM2_CC.PolicyAuthValue,
    TPM2_CC.PolicyPassword,
    TPM2_CC.PolicyGetDigest,
    TPM2_CC.PolicyNvWritten,
    TPM2_CC.PolicyTemplate,
    TPM2_CC.PolicyRestart,
}
TWO_AUTH = {
    TPM2_CC.Certify,
    TPM2_CC.ActivateCredential,
    TPM2_CC.NV_UndefineSpaceSpecial,
    TPM2_CC.NV_Certify,
    TPM2_CC.GetSessionAuditDigest,
    TPM2_CC.GetCommandAuditDigest,
    TPM2_CC.GetTime,
    TPM2_CC.CertifyX509,
    TPM2_CC.EventSequenceComplete,
}
SE_TYPES = {0: "hmac", 1: "policy", 3: "trial"}
HIERARCHIES = {
    int(TPM2_RH.OWNER): "owner",
    int(TPM2_RH.ENDORSEMENT): "endorsement",
    int(TPM2_RH.PLATFORM): "platform",
    TPM_RH_NULL: "NULL",
}
HASH_NAMES = {0x0004: "SHA1", 0x000B: "SHA256", 0x000C: "SHA384", 0x000D: "SHA512", 0x0010: "NULL"}
AUTH_NAMES = {
    "owner": int(TPM2_RH.OWNER),
    "endorsement": int(TPM2_RH.ENDORSEMENT),
    "platform": int(TPM2_RH.PLATFORM),
    "lockout": int(TPM2_RH.LOCKOUT),
    "null": TPM_RH_NULL,
}


def parse_auth(text: str) -> tuple[int, bytes]:
    """`HANDLE=VALUE`: HANDLE hex or owner/endorsement/platform/lockout; VALUE text or hex:…"""
    handle, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"--auth {text!r}: expected HANDLE=VALUE")
    h = AUTH_NAMES.get(handle.lower())
    if h is None:
        try:
            h = int(handle, 16)
        except ValueError:
            raise ValueError(
                f"--auth {text!r}: HANDLE is hex or owner/endorsement/platform/lockout"
            ) from None
    if value.startswith("hex:"):
        try:
            return h, bytes.fromhex(value[4:])
        except ValueError:
            raise ValueError(f"--auth {text!r}: bad hex") from None
    return h, value.encode()


def auth_handle_count(cc: int | None, handles: int) -> int:
    """How many of a command's handles are authorised by its first sessions."""
    if cc is None or not handles or cc in ZERO_AUTH:
        return 0
    return min(handles, 2 if cc in TWO_AUTH else 1)


@dataclass(slots=True)
class _Sess:
    facts: SessionFacts
    sym_alg: int = ALG_NULL
    key_bits: int = 0
    mode: int = 0
    auth_hash: int = 0x000B
    nonce_tpm: bytes = b""
    nonce_caller: bytes = b""
    start_tpm: bytes = b""  # nonces of StartAuthSession, for the sessionKey
    start_caller: bytes = b""
    bind: int = TPM_RH_NULL
    bind_name: bytes | None = None
    salted: bool = False
    key: bytes | None = None  # the sessionKey, once an HMAC proved it
    key_src: str = ""
    key_auth: bytes = b""
    failed: bool = False  # an HMAC of this session verified with no candidate
    policy: str = ""


@dataclass(frozen=True, slots=True)
class _Value:
    """One candidate sessionValue (HMAC key and parameter-encryption key)."""

    value: bytes  # the HMAC key
    enc: bytes  # the parameter-encryption key
    key: bytes
    key_src: str
    auth: tuple[bytes, str] | None  # the entity authValue, if the session authorises one
    auth_in_hmac: bool  # the HMAC covers the authValue too (so a match proves it)
    bind_auth: bytes = b""  # the bind authValue the sessionKey was derived with


@dataclass(slots=True)
class _Check:
    """The outcome of checking one session's HMAC on one message."""

    status: str  # "ok" | "fail" | "none" (nothing to check)
    value: _Value | None = None
    candidates: list[_Value] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    info: TpmInfo
    msg: bytes = b""
    start: dict[str, Any] | None = None
    drop: list[int] = field(default_factory=list)
    readable: list[Readable] = field(default_factory=list)


def _sym_text(alg: int, bits: int, mode: int) -> str:
    if alg == ALG_NULL:
        return "NULL"
    if alg == ALG_XOR:
        return f"XOR-{HASH_NAMES.get(bits, hex(bits))}"
    name = {ALG_AES: "AES", 0x0026: "CAMELLIA", 0x0013: "SM4"}.get(alg, f"alg{alg:#x}")
    m = {0x0043: "CFB"}.get(mode, f"mode{mode:#x}")
    return f"{name}-{bits}-{m}"


def _cp_buffer(msg: bytes, nh: int, tag: int) -> bytes:
    off = 10 + 4 * nh
    if tag == 0x8002:
        off += 4 + int.from_bytes(msg[off : off + 4], "big")
    return msg[off:]


def _command_mac(
    h: int,
    cc: int,
    names: list[bytes],
    cp: bytes,
    nonce: bytes,
    older: bytes,
    attrs: int,
    extra: bytes,
    key: bytes,
) -> bytes:
    return command_hmac(h, key, cc, names, cp, nonce, older, attrs, extra)


def _response_mac(
    h: int, cc: int, rp: bytes, nonce: bytes, older: bytes, attrs: int, key: bytes
) -> bytes:
    return response_hmac(h, key, cc, rp, nonce, older, attrs)


def _rp_buffer(msg: bytes, nh: int) -> bytes:
    off = 10 + 4 * nh
    psize = int.from_bytes(msg[off : off + 4], "big")
    return msg[off + 4 : off + 4 + psize]


class SessionTracker:
    def __init__(self, auth: dict[int, bytes] | None = None) -> None:
        self.auth = auth or {}
        self.book = AuthBook(self.auth)
        self.names = NameBook()
        self.sessions: dict[int, _Sess] = {}
        self.objects: dict[int, str] = {}
        self._pending: dict[int, _Pending] = {}

    # -- facts ------------------------------------------------------------------
    def _facts(self, handle: int | None) -> SessionFacts:
        if handle is None:
            return SessionFacts(0, "unknown", origin="unknown")
        if handle == TPM_RS_PW:
            return SessionFacts(handle, "password", salted=False, bound=False, symmetric="NULL")
        s = self.sessions.get(handle)
        if s is not None:
            return replace(s.facts, policy=s.policy) if s.policy else s.facts
        kind = {0x02: "hmac", 0x03: "policy"}.get(handle >> 24, "unknown")
        return SessionFacts(handle, kind, origin="unknown")

    def key_origin(self, handle: int) -> str:
        if handle in self.objects:
            return self.objects[handle]
        if 0x81010000 <= handle <= 0x810100FF:
            return f"EK 0x{handle:08x} (persistent)"
        if handle >> 24 == 0x81:
            return f"persistent key 0x{handle:08x}"
        return f"key 0x{handle:08x} (origin unseen)"

    # -- derivation -------------------------------------------------------------
    def _keys(self, st: _Sess) -> list[tuple[bytes, str, bytes]]:
        """Candidate (sessionKey, how, bind authValue) an observer can compute (none for a
        salted session)."""
        if st.key is not None:
            return [(st.key, st.key_src, st.key_auth)]
        if st.salted or st.auth_hash not in HASHES:
            return []
        if st.bind == TPM_RH_NULL:
            return [(b"", "unsalted+unbound", b"")]
        out = []
        for auth, src in self.book.candidates(st.bind, st.bind_name):
            key = session_key(st.auth_hash, auth, st.start_tpm, st.start_caller)
            out.append((key, f"bound to 0x{st.bind:08x}, {src} authValue", auth))
        return out

    def _is_bind(self, st: _Sess, entity: int) -> bool:
        if st.bind == TPM_RH_NULL or entity != st.bind:
            return False
        name = self.names.name(entity)
        return st.bind_name is None or name is None or name == st.bind_name

    def _values(
        self, st: _Sess, entity: int | None, extra: list[tuple[bytes, str]] | None = None
    ) -> list[_Value]:
        """Candidate sessionValues for a session authorising `entity` (None: no handle).

        The HMAC key includes the entity's authValue except for its own bind entity and
        for a policy session before PolicyAuthValue; the parameter-encryption key includes
        it whenever the session authorises an entity, bind entity and policy sessions
        included (what the TPM does: measured with swtpm/libtpms, see docs/verdicts.md)."""
        keys = self._keys(st)
        if entity is None:
            return [_Value(k, k, k, src, None, True, b) for k, src, b in keys]
        if self._is_bind(st, entity):  # its authValue is the bind authValue of the key
            return [_Value(k, k + strip_auth(b), k, src, None, True, b) for k, src, b in keys]
        auths = (extra or []) + self.book.candidates(entity, self.names.name(entity))
        out = []
        policy = st.facts.type == "policy"
        for k, src, b in keys:
            for a, asrc in auths:
                enc = k + strip_auth(a)
                if not policy or st.policy == "authvalue":
                    out.append(_Value(enc, enc, k, src, (a, asrc), True, b))
                if policy:  # before PolicyAuthValue (or after a reset): sessionKey alone
                    out.append(_Value(k, enc, k, src, (a, asrc), False, b))
        if policy and st.policy != "authvalue":  # also try PolicyAuthValue's key
            for k, src, b in keys:
                for a, asrc in auths:
                    enc = k + strip_auth(a)
                    out.append(_Value(enc, enc, k, src, (a, asrc), True, b))
        return out

    def _check(
        self,
        st: _Sess,
        values: list[_Value],
        mac: bytes,
        compute: Callable[[bytes], bytes] | None,
    ) -> _Check:
        if not values:
            return _Check("fail")
        if not mac or compute is None or st.policy == "password":
            return _Check("none", candidates=values)
        for v in values:
            try:
                ok = compute(v.value) == mac
            except Exception:  # a crypto error must not stop annotation
                ok = False
            if ok:
                if st.key is None:
                    st.key, st.key_src, st.key_auth = v.key, v.key_src, v.bind_auth
                st.failed = False
                return _Check("ok", v, values)
        st.failed = True
        return _Check("fail", candidates=values)

    def _entity(self, cmd: TpmInfo, i: int) -> int | None:
        k = auth_handle_count(cmd.cc, len(cmd.handles))
        return cmd.handles[i] if i < k else None

    def _check_command(self, info: TpmInfo, msg: bytes) -> dict[int, _Check]:
        out: dict[int, _Check] = {}
        names = self.names.names_of(info.handles)
        cp = _cp_buffer(msg, len(info.handles), info.tag)
        dec = next((i for i, s in enumerate(info.sessions) if s.attributes & DECRYPT), None)
        enc = next((i for i, s in enumerate(info.sessions) if s.attributes & ENCRYPT), None)
        for i, s in enumerate(info.sessions):
            st = self.sessions.get(s.handle) if s.handle is not None else None
            if st is None or info.cc is None:
                continue
            extra_nonces = b""
            if i == 0:
                for j in (dec, enc if enc != dec else None):
                    if j is not None and j != 0:
                        other = self.sessions.get(info.sessions[j].handle or 0)
                        extra_nonces += other.nonce_tpm if other is not None else b""
            extra = [(s.auth, "PolicyPassword")] if st.policy == "password" and s.auth else None
            values = self._values(st, self._entity(info, i), extra)
            compute: Callable[[bytes], bytes] | None = None
            if names is not None:
                compute = partial(
                    _command_mac,
                    st.auth_hash,
                    info.cc,
                    names,
                    cp,
                    s.nonce,
                    st.nonce_tpm,
                    s.attributes,
                    extra_nonces,
                )
            out[i] = self._check(st, values, s.auth, compute)
        return out

    def _check_response(self, info: TpmInfo, msg: bytes, pend: _Pending) -> dict[int, _Check]:
        out: dict[int, _Check] = {}
        cmd = pend.info
        if cmd.cc is None:
            return out
        rp = _rp_buffer(msg, len(info.handles))
        extra = self._new_auth(pend)
        for i, s in enumerate(info.sessions):
            st = self.sessions.get(s.handle) if s.handle is not None else None
            if st is None or i >= len(cmd.sessions):
                continue
            pw = cmd.sessions[i].auth
            more = [(pw, "PolicyPassword")] if st.policy == "password" and pw else []
            values = self._values(st, self._entity(cmd, i), more + extra)
            compute = partial(
                _response_mac,
                st.auth_hash,
                cmd.cc,
                rp,
                s.nonce,
                cmd.sessions[i].nonce,
                s.attributes,
            )
            out[i] = self._check(st, values, s.auth, compute)
        return out

    def _new_auth(self, pend: _Pending) -> list[tuple[bytes, str]]:
        """A readable new authValue of this command: the response HMAC may use it."""
        cc = pend.info.cc
        if cc not in (CC_HIERARCHY_CHANGE_AUTH, CC_NV_CHANGE_AUTH):
            return []
        return [
            (r.value, f"{pend.info.name} newAuth") for r in pend.readable if "newAuth" in r.field
        ]

    # -- commands ---------------------------------------------------------------
    def on_command(self, conn: int, info: TpmInfo, msg: bytes) -> TpmInfo:
        if info.sessions:
            sessions = tuple(replace(s, facts=self._facts(s.handle)) for s in info.sessions)
            info = replace(info, sessions=sessions)
            checks = self._check_command(info, msg)
            param = self._grade(info, msg, DECRYPT, checks, command=True)
            if param is not info.param:
                info = replace(info, param=param)
            for s in info.sessions:
                if s.handle in self.sessions:
                    self.sessions[s.handle].nonce_caller = s.nonce
        pend = _Pending(info, msg)
        pend.readable = readable_values(info, msg, True)
        pend.drop = [
            s.handle
            for s in info.sessions
            if s.handle is not None and s.handle != TPM_RS_PW and not s.attributes & CONTINUE
        ]
        if info.cc == CC_START_AUTH_SESSION and len(info.params) == 5 and len(info.handles) == 2:
            nonce, salt, se, sym, auth_hash = info.params
            pend.start = {
                "tpm_key": info.handles[0],
                "bind": info.handles[1],
                "nonce_caller": bytes(nonce),
                "salt_len": len(bytes(salt)),
                "type": SE_TYPES.get(int(se), f"se{int(se)}"),
                "sym": sym,
                "auth_hash": int(auth_hash),
            }
        self._pending[conn] = pend
        return info

    # -- responses --------------------------------------------------------------
    def on_response(self, conn: int, info: TpmInfo, msg: bytes) -> TpmInfo:
        pend = self._pending.pop(conn, None)
        if pend is None or info.code != 0:
            return info
        cmd = pend.info
        checks: dict[int, _Check] = {}
        if info.sessions:
            sessions = [
                replace(s, facts=self._facts(s.handle) if s.handle else None) for s in info.sessions
            ]
            info = replace(info, sessions=tuple(sessions))
            checks = self._check_response(info, msg, pend)
            param = self._grade(info, msg, ENCRYPT, checks, command=False, cmd=cmd)
            if param is not info.param:
                info = replace(info, param=param)
            for s in info.sessions:
                if s.handle is not None and s.handle in self.sessions:
                    self.sessions[s.handle].nonce_tpm = s.nonce  # nonceOlder for the next use
        try:
            self._learn(cmd, info, pend)
            self._learn_auth(cmd, info, msg, pend, checks)
        except Exception as exc:  # an odd message must never stop annotation
            log.debug("learning failed", error=repr(exc))
        for h in pend.drop:
            self.sessions.pop(h, None)
        return info

    def _learn_auth(
        self, cmd: TpmInfo, rsp: TpmInfo, msg: bytes, pend: _Pending, checks: dict[int, _Check]
    ) -> None:
        """authValues that crossed readable in this (successful) exchange."""
        cc = cmd.cc
        for r in pend.readable:
            if cc in (CC_CREATE_PRIMARY, CC_CREATE_LOADED) and r.field.endswith("userAuth"):
                h = rsp.handles[0] if rsp.handles else None
                self.book.learn(
                    r.value, f"{cmd.name} userAuth", h, self.names.name(h) if h else None
                )
            elif cc == CC_CREATE and r.field.endswith("userAuth") and len(rsp.params) >= 2:
                name = bytes(rsp.params[1].get_name())
                self.book.learn(r.value, "Create userAuth", None, name)
            elif cc in (CC_HIERARCHY_CHANGE_AUTH, CC_NV_CHANGE_AUTH) and cmd.handles:
                h = cmd.handles[0]
                self.book.set_handle(r.value, f"{cmd.name} newAuth", h)
            elif cc == CC_OBJECT_CHANGE_AUTH and cmd.handles and "newAuth" in r.field:
                self.book.learn(
                    r.value, "ObjectChangeAuth newAuth", None, self.names.name(cmd.handles[0])
                )
            elif cc == CC_NV_DEFINE and len(cmd.params) >= 2 and r.field.endswith(" auth"):
                index = int(cmd.params[1].nvPublic.nvIndex)
                self.book.learn(r.value, "NV_DefineSpace auth", index, self.names.name(index))
            elif cc == CC_LOAD_EXTERNAL and rsp.handles and r.field.endswith("inPrivate"):
                auth = sensitive_auth(r.value)
                if auth:
                    h = rsp.handles[0]
                    self.book.learn(auth, "LoadExternal authValue", h, self.names.name(h))
        k = auth_handle_count(cc, len(cmd.handles))
        for i, s in enumerate(cmd.sessions[:k]):
            entity = cmd.handles[i]
            password = s.handle == TPM_RS_PW or (
                s.facts is not None and s.facts.policy == "password"
            )
            if password and s.auth:
                self.book.learn(s.auth, "password session", entity, self.names.name(entity))
            for c in (checks.get(i),):
                if (
                    c is not None
                    and c.status == "ok"
                    and c.value is not None
                    and c.value.auth
                    and c.value.auth_in_hmac
                ):
                    a, src = c.value.auth
                    if a:
                        self.book.learn(a, src, entity, self.names.name(entity))

    def _learn(self, cmd: TpmInfo, rsp: TpmInfo, pend: _Pending) -> None:
        cc = cmd.cc
        if cc is not None:
            self.names.on_success(cc, cmd.handles, cmd.params, rsp.handles, rsp.params)
        if cc in (CC_POLICY_AUTH_VALUE, CC_POLICY_PASSWORD, CC_POLICY_RESTART) and cmd.handles:
            st = self.sessions.get(cmd.handles[0])
            if st is not None:
                st.policy = {CC_POLICY_AUTH_VALUE: "authvalue", CC_POLICY_PASSWORD: "password"}.get(
                    cc, ""
                )
        if pend.start is not None and rsp.handles:
            st0 = pend.start
            sym = st0["sym"]
            alg = int(sym.algorithm)
            bits = int(sym.keyBits.exclusiveOr) if alg == ALG_XOR else int(sym.keyBits.sym)
            mode = int(sym.mode.sym) if alg not in (ALG_XOR, ALG_NULL) else 0
            salted = st0["tpm_key"] != TPM_RH_NULL and st0["salt_len"] > 0
            bound = st0["bind"] != TPM_RH_NULL
            handle = rsp.handles[0]
            facts = SessionFacts(
                handle,
                st0["type"],
                salted=salted,
                bound=bound,
                symmetric=_sym_text(alg, bits if alg != ALG_NULL else 0, mode),
                auth_hash=HASH_NAMES.get(st0["auth_hash"], hex(st0["auth_hash"])),
                salt_key=self.key_origin(st0["tpm_key"]) if salted else None,
                tpm_key=st0["tpm_key"],
                bind=st0["bind"],
            )
            nonce_tpm = bytes(rsp.params[0]) if rsp.params else b""
            self.sessions[handle] = _Sess(
                facts,
                alg,
                bits,
                mode,
                st0["auth_hash"],
                nonce_tpm,
                st0["nonce_caller"],
                start_tpm=nonce_tpm,
                start_caller=st0["nonce_caller"],
                bind=st0["bind"],
                bind_name=self.names.name(st0["bind"]) if bound else None,
                salted=salted,
            )
        elif cc == CC_FLUSH and cmd.params:
            h = int(cmd.params[0])
            self.sessions.pop(h, None)
            self.objects.pop(h, None)
            self.book.forget(h)
        elif (
            cc in (CC_CREATE_PRIMARY, CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD, CC_CREATE_LOADED)
            and rsp.handles
        ):
            h = rsp.handles[0]
            if cc != CC_CONTEXT_LOAD or h >> 24 not in (0x02, 0x03):
                self.book.forget(h)  # a new object in a reused handle
            if cc == CC_CREATE_PRIMARY and cmd.handles:
                where = HIERARCHIES.get(cmd.handles[0], f"0x{cmd.handles[0]:08x}")
                self.objects[h] = f"primary key in {where} hierarchy"
            elif cc == CC_CONTEXT_LOAD:
                if h >> 24 in (0x02, 0x03):
                    return  # a session's context came back: same handle, same session
                self.objects[h] = "context-loaded key (origin unseen)"
            elif cc == CC_LOAD_EXTERNAL:
                self.objects[h] = "external key (LoadExternal)"
            else:
                parent = self.key_origin(cmd.handles[0]) if cmd.handles else "?"
                self.objects[h] = f"loaded key under {parent}"

    # -- verdicts ---------------------------------------------------------------
    def _grade(
        self,
        info: TpmInfo,
        msg: bytes,
        flag: int,
        checks: dict[int, _Check],
        *,
        command: bool,
        cmd: TpmInfo | None = None,
    ) -> Param:
        p = info.param
        if p.verdict is not Verdict.ENCRYPTED:
            return p
        idx = next((i for i, s in enumerate(info.sessions) if s.attributes & flag), None)
        if idx is None and cmd is not None:  # response: the command asked for encryption
            idx = next((i for i, s in enumerate(cmd.sessions) if s.attributes & flag), None)
        if idx is None or idx >= len(info.sessions):
            return p
        s = info.sessions[idx]
        facts = s.facts
        if facts is None or facts.origin == "unknown" or s.handle not in self.sessions:
            return replace(
                p, verdict=Verdict.UNKNOWN, session=s.handle, strength="session start not seen"
            )
        st = self.sessions[s.handle]
        sym = facts.symmetric
        if st.salted:
            return replace(p, session=s.handle, strength=f"{sym}, salted by {facts.salt_key}")
        check = checks.get(idx)
        value: _Value | None = None
        proof = "none"
        if check is not None and check.status == "ok" and check.value is not None:
            value = check.value
            if value.auth is None or value.auth_in_hmac or not value.auth[0]:
                proof = "hmac"
            else:  # the HMAC proved the sessionKey; pick the authValue the same way
                value = next((v for v in check.candidates if v.key == value.key and v.auth), value)
        elif check is not None and check.status == "none" and not st.failed and check.candidates:
            value = check.candidates[0]
        if value is None:
            ent = self._entity(cmd if cmd is not None else info, idx)
            if st.bind != TPM_RH_NULL and st.key is None:
                why = f"bound to 0x{st.bind:08x}, authValue never seen"
            elif ent is not None and not self._is_bind(st, ent):
                why = f"authValue of 0x{ent:08x} never seen"
            else:  # every input of the key is known, yet the HMAC does not verify
                return replace(
                    p,
                    verdict=Verdict.UNKNOWN,
                    session=s.handle,
                    strength=f"{sym}, HMAC does not verify with the derivable key",
                )
            return replace(p, session=s.handle, strength=f"{sym}, {why}")
        recovered = self._decrypt(info, msg, idx, st, value.enc, command, cmd)
        how = value.key_src
        if value.auth is not None:
            how += f"; entity {value.auth[1]} authValue"
        return replace(
            p,
            verdict=Verdict.WEAK,
            session=s.handle,
            strength=f"{sym}, {how}",
            recovered=recovered,
            proof=proof,
        )

    def _decrypt(
        self,
        info: TpmInfo,
        msg: bytes,
        idx: int,
        st: _Sess,
        session_value: bytes,
        command: bool,
        cmd: TpmInfo | None,
    ) -> bytes | None:
        p = info.param
        if p.offset is None or not p.size or st.auth_hash not in HASHES:
            return None
        data = msg[p.offset + 2 : p.offset + 2 + p.size]
        if command:
            newer, older = info.sessions[idx].nonce, st.nonce_tpm
        else:
            caller = cmd.sessions[idx].nonce if cmd and idx < len(cmd.sessions) else st.nonce_caller
            newer, older = info.sessions[idx].nonce, caller
        try:
            return decrypt_param(
                sym_alg=st.sym_alg,
                key_bits=st.key_bits,
                mode=st.mode,
                hash_alg=st.auth_hash,
                session_value=session_value,
                nonce_newer=newer,
                nonce_older=older,
                data=data,
            )
        except Exception as exc:  # a crypto error must not stop annotation
            log.debug("weak-session decryption failed", error=repr(exc))
            return None
