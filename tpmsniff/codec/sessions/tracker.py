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
        if pend is None or info.code != 0:
            return info
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
