"""Session tracking and encryption-strength verdicts (docs/verdicts.md).

Sessions are learned from StartAuthSession (type, salted/bound, symmetric, authHash) and
end on FlushContext or on a successful response to a command that cleared
continueSession. Handles are global on a TPM, so one tracker serves every connection to
one upstream TPM; a session first seen mid-stream is of "unknown" origin. The tracker
also remembers where loaded keys came from, to say what a salt key is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from ..model import Param, SessionFacts, TpmInfo, Verdict
from .paramcrypt import ALG_AES, ALG_NULL, ALG_XOR, HASHES, decrypt_param

log = structlog.get_logger("tpmsniff.sessions")

TPM_RS_PW = 0x40000009
TPM_RH_NULL = 0x40000007
CONTINUE, DECRYPT, ENCRYPT = 0x01, 0x20, 0x40
CC_START_AUTH_SESSION, CC_FLUSH = 0x176, 0x165
CC_CREATE_PRIMARY, CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD, CC_CREATE_LOADED = (
    0x131,
    0x157,
    0x167,
    0x161,
    0x191,
)
SE_TYPES = {0: "hmac", 1: "policy", 3: "trial"}
HIERARCHIES = {
    0x40000001: "owner",
    0x4000000B: "endorsement",
    0x4000000C: "platform",
    TPM_RH_NULL: "NULL",
}
HASH_NAMES = {0x0004: "SHA1", 0x000B: "SHA256", 0x000C: "SHA384", 0x000D: "SHA512", 0x0010: "NULL"}
AUTH_NAMES = {
    "owner": 0x40000001,
    "endorsement": 0x4000000B,
    "platform": 0x4000000C,
    "lockout": 0x4000000A,
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


@dataclass(slots=True)
class _Sess:
    facts: SessionFacts
    sym_alg: int = ALG_NULL
    key_bits: int = 0
    mode: int = 0
    auth_hash: int = 0x000B
    nonce_tpm: bytes = b""
    nonce_caller: bytes = b""


@dataclass(slots=True)
class _Pending:
    info: TpmInfo
    start: dict[str, Any] | None = None
    drop: list[int] = field(default_factory=list)


def _sym_text(alg: int, bits: int, mode: int) -> str:
    if alg == ALG_NULL:
        return "NULL"
    if alg == ALG_XOR:
        return f"XOR-{HASH_NAMES.get(bits, hex(bits))}"
    name = {ALG_AES: "AES", 0x0026: "CAMELLIA", 0x0013: "SM4"}.get(alg, f"alg{alg:#x}")
    m = {0x0043: "CFB"}.get(mode, f"mode{mode:#x}")
    return f"{name}-{bits}-{m}"


class SessionTracker:
    def __init__(self, auth: dict[int, bytes] | None = None) -> None:
        self.auth = auth or {}
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
            return s.facts
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

    # -- commands ---------------------------------------------------------------
    def on_command(self, conn: int, info: TpmInfo, msg: bytes) -> TpmInfo:
        if info.sessions:
            sessions = tuple(replace(s, facts=self._facts(s.handle)) for s in info.sessions)
            for s in info.sessions:
                if s.handle in self.sessions:
                    self.sessions[s.handle].nonce_caller = s.nonce
            info = replace(info, sessions=sessions)
            param = self._grade(info, msg, DECRYPT, command=True)
            if param is not info.param:
                info = replace(info, param=param)
        pend = _Pending(info)
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
        if info.sessions:
            sessions = []
            for s in info.sessions:
                if s.handle is not None and s.handle in self.sessions:
                    self.sessions[s.handle].nonce_tpm = s.nonce  # nonceOlder for the next use
                sessions.append(replace(s, facts=self._facts(s.handle) if s.handle else None))
            info = replace(info, sessions=tuple(sessions))
            param = self._grade(info, msg, ENCRYPT, command=False, cmd=cmd)
            if param is not info.param:
                info = replace(info, param=param)
        self._learn(cmd, info, pend)
        for h in pend.drop:
            self.sessions.pop(h, None)
        return info

    def _learn(self, cmd: TpmInfo, rsp: TpmInfo, pend: _Pending) -> None:
        cc = cmd.cc
        if pend.start is not None and rsp.handles:
            st = pend.start
            sym = st["sym"]
            alg = int(sym.algorithm)
            bits = int(sym.keyBits.exclusiveOr) if alg == ALG_XOR else int(sym.keyBits.sym)
            mode = int(sym.mode.sym) if alg not in (ALG_XOR, ALG_NULL) else 0
            salted = st["tpm_key"] != TPM_RH_NULL and st["salt_len"] > 0
            bound = st["bind"] != TPM_RH_NULL
            handle = rsp.handles[0]
            facts = SessionFacts(
                handle,
                st["type"],
                salted=salted,
                bound=bound,
                symmetric=_sym_text(alg, bits if alg != ALG_NULL else 0, mode),
                auth_hash=HASH_NAMES.get(st["auth_hash"], hex(st["auth_hash"])),
                salt_key=self.key_origin(st["tpm_key"]) if salted else None,
                tpm_key=st["tpm_key"],
                bind=st["bind"],
            )
            nonce_tpm = bytes(rsp.params[0]) if rsp.params else b""
            self.sessions[handle] = _Sess(
                facts, alg, bits, mode, st["auth_hash"], nonce_tpm, st["nonce_caller"]
            )
        elif cc == CC_FLUSH and cmd.params:
            h = int(cmd.params[0])
            self.sessions.pop(h, None)
            self.objects.pop(h, None)
        elif (
            cc in (CC_CREATE_PRIMARY, CC_LOAD, CC_LOAD_EXTERNAL, CC_CONTEXT_LOAD, CC_CREATE_LOADED)
            and rsp.handles
        ):
            h = rsp.handles[0]
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
        self, info: TpmInfo, msg: bytes, flag: int, *, command: bool, cmd: TpmInfo | None = None
    ) -> Param:
        p = info.param
        if p.verdict is not Verdict.ENCRYPTED:
            return p
        idx = next((i for i, s in enumerate(info.sessions) if s.attributes & flag), None)
        if idx is None:
            return p
        s = info.sessions[idx]
        facts = s.facts
        if facts is None or facts.origin == "unknown" or s.handle not in self.sessions:
            return replace(
                p, verdict=Verdict.UNKNOWN, session=s.handle, strength="session start not seen"
            )
        st = self.sessions[s.handle]
        if not facts.salted and not facts.bound:
            recovered = self._decrypt(info, msg, idx, st, command, cmd)
            return replace(
                p,
                verdict=Verdict.WEAK,
                session=s.handle,
                strength=f"unsalted+unbound {facts.symmetric}",
                recovered=recovered,
            )
        if st.sym_alg == ALG_XOR:
            strength = "XOR obfuscation"
        elif facts.salted:
            strength = f"salted {facts.symmetric}"
        else:
            strength = f"bound {facts.symmetric}"
        return replace(p, session=s.handle, strength=strength)

    def _decrypt(
        self, info: TpmInfo, msg: bytes, idx: int, st: _Sess, command: bool, cmd: TpmInfo | None
    ) -> bytes | None:
        p = info.param
        if p.offset is None or not p.size or st.auth_hash not in HASHES:
            return None
        data = msg[p.offset + 2 : p.offset + 2 + p.size]
        handles = info.handles if command else (cmd.handles if cmd else ())
        entity = handles[idx] if idx < len(handles) else None
        auth = self.auth.get(entity, b"") if entity is not None else b""
        session_value = b"" + auth  # sessionKey is empty: unsalted and unbound
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
