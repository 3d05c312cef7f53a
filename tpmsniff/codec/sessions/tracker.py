"""`SessionTracker`: the per-TPM entry point that runs, for each command and response,
the HMAC proof, the grading and the learning of this package in order."""

from __future__ import annotations

from dataclasses import replace

import structlog

from ...model import TPM_RS_PW, TpmInfo
from ..authvalues import readable_values
from .grading import grade
from .handles import CONTINUE, DECRYPT, ENCRYPT
from .learning import learn, learn_auth
from .proof import Check, check_command, check_response
from .table import Pending, SessionTable, StartRequest

log = structlog.get_logger("tpmsniff.sessions")

# format-1 response codes (Part 2 §6.6.3): error number in bits 0-5, P bit 6
RC_FMT1, RC_P, RC_SIZE, RC_VALUE, RC_INSUFFICIENT = 0x080, 0x040, 0x015, 0x004, 0x01A
REFUSALS = {
    RC_SIZE: "TPM_RC_SIZE",
    RC_VALUE: "TPM_RC_VALUE",
    RC_INSUFFICIENT: "TPM_RC_INSUFFICIENT",
}


def _with_refusal(rsp: TpmInfo, cmd: TpmInfo) -> TpmInfo:
    """An error response is evidence: a size or value error about the first parameter of
    a command whose session said it was encrypted means the TPM could not parse what it
    decrypted, as when the client sent it in clear (docs/verdicts.md)."""
    p, rc = cmd.param, rsp.code
    if p.session is None or p.type_name is None or not rc & RC_FMT1:
        return rsp
    err = REFUSALS.get(rc & 0x3F)
    if err is None or (rc & RC_P and (rc >> 8) & 0xF not in (0, 1)):
        return rsp  # another error, or one about another parameter
    note = (
        f"TPM answered {err} to the {p.type_name} it decrypted with session "
        f"0x{p.session:08x}: consistent with a parameter sent in clear"
    )
    return replace(rsp, param=replace(rsp.param, type_name=p.type_name, note=note))


class SessionTracker:
    def __init__(self, auth: dict[int, bytes] | None = None) -> None:
        self.table = SessionTable(auth)
        self.book = self.table.book
        self.names = self.table.names
        self.sessions = self.table.sessions
        self._pending: dict[int, Pending] = {}

    def key_origin(self, handle: int) -> str:
        return self.table.objects.origin(handle)

    def on_command(self, conn: int, info: TpmInfo, msg: bytes) -> TpmInfo:
        table = self.table
        if info.sessions:
            sessions = tuple(replace(s, facts=table.facts(s.handle)) for s in info.sessions)
            info = replace(info, sessions=sessions)
            checks = check_command(table, info, msg)
            param = grade(table, info, msg, DECRYPT, checks)
            if param is not info.param:
                info = replace(info, param=param)
            for s in info.sessions:
                if s.handle in table.sessions:
                    table.sessions[s.handle].nonce_caller = s.nonce
        pend = Pending(info, msg, start=StartRequest.from_command(info))
        pend.readable = readable_values(info, msg, True)
        pend.drop = [
            s.handle
            for s in info.sessions
            if s.handle is not None and s.handle != TPM_RS_PW and not s.attributes & CONTINUE
        ]
        self._pending[conn] = pend
        return info

    def on_response(self, conn: int, info: TpmInfo, msg: bytes) -> TpmInfo:
        table = self.table
        pend = self._pending.pop(conn, None)
        if pend is None:
            return info
        if info.code != 0:
            return _with_refusal(info, pend.info)
        cmd = pend.info
        checks: dict[int, Check] = {}
        if info.sessions:
            sessions = [
                replace(s, facts=table.facts(s.handle) if s.handle else None) for s in info.sessions
            ]
            info = replace(info, sessions=tuple(sessions))
            checks = check_response(table, info, msg, pend)
            param = grade(table, info, msg, ENCRYPT, checks, cmd=cmd)
            if param is not info.param:
                info = replace(info, param=param)
            for s in info.sessions:
                if s.handle is not None and s.handle in table.sessions:
                    table.sessions[s.handle].nonce_tpm = s.nonce  # nonceOlder for the next use
        try:
            learn(table, cmd, info, pend)
            learn_auth(table, cmd, info, pend, checks)
        except Exception as exc:  # an odd message must never stop annotation
            log.debug("learning failed", error=repr(exc))
        for h in pend.drop:
            table.sessions.pop(h, None)
        return info
