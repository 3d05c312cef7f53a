"""Findings of a check, and naming the field of a message that holds a given byte."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import TPM_RS_PW, Channel, Direction, Frame

# TPM_ST_SESSIONS (TPM 2.0 Part 2, 6.9): one constant is not worth importing tpm2-pytss
# (about 240 ms) for; tests/unit/check checks it against TPM2_ST.SESSIONS.
ST_SESSIONS = 0x8002


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "secret" | "sensitive" | "not-encrypted" | "weak" | "empty" | "not-seen"
    message: str
    frame: int | None = None
    conn: int | None = None
    command: str | None = None
    direction: str | None = None
    offset: int | None = None
    field: str | None = None
    file: str | None = None
    secret: int | None = None  # kind "secret": the number N of `secret #N`

    def text(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        if self.conn is not None:
            where.append(f"conn {self.conn}")
        if self.command:
            where.append(f"{self.command} {self.direction}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.field:
            where.append(f"field {self.field}")
        return f"{self.kind.upper()}: {self.message}" + (f" ({', '.join(where)})" if where else "")


def field_at(f: Frame, offset: int) -> str:
    """Name the part of the message holding byte `offset` of f.raw."""
    if f.channel is Channel.CTRL or f.tpm is None:
        return "control message" if f.channel is Channel.CTRL else "unframed bytes"
    t = f.tpm
    rel = offset - f.prefix
    if rel < 0:
        return "mssim prefix"
    if rel >= t.size:
        return "mssim trailer"
    if rel < 10:
        return "header"
    p = t.param
    if p.offset is not None and p.size is not None and p.offset <= rel < p.offset + 2 + p.size:
        return f"parameter[0] {p.type_name}"
    pos = 10 + 4 * len(t.handles)
    if rel < pos:
        return f"handle[{(rel - 10) // 4}]"
    if t.header_only:
        return "body"
    msg = f.message
    if f.direction is Direction.COMMAND:
        if t.tag == ST_SESSIONS:
            if rel < pos + 4:
                return "authorizationSize"
            pos += 4
            for i, s in enumerate(t.sessions):
                end = pos + 4 + 2 + len(s.nonce) + 1 + 2 + len(s.auth)
                if rel < end:
                    if rel >= end - len(s.auth):
                        kind = "password authValue" if s.handle == TPM_RS_PW else "hmac"
                        return f"session[{i}].{kind}"
                    return f"session[{i}]"
                pos = end
        return "parameters"
    if t.tag == ST_SESSIONS:
        psize = int.from_bytes(msg[pos : pos + 4], "big")
        if rel < pos + 4:
            return "parameterSize"
        if rel < pos + 4 + psize:
            return "parameters"
        return "sessions"
    return "parameters"
