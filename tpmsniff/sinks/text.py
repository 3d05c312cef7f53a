"""Shared text rendering: one-line descriptions of frames, used by the pcapng comments and
the console (so both say the same thing about a message)."""

from __future__ import annotations

import os
from typing import TextIO

from ..codec.tpm import attrs_text
from ..model import Channel, CtrlInfo, Direction, Frame, Session, Verdict

SESSION_KINDS = {0x02: "hmac", 0x03: "policy"}
RESET, BOLD, DIM, RED, GREEN, YELLOW, CYAN = (
    "\033[0m",
    "\033[1m",
    "\033[2m",
    "\033[31m",
    "\033[32m",
    "\033[33m",
    "\033[36m",
)


def wants_colour(out: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set."""
    try:
        return out.isatty() and "NO_COLOR" not in os.environ
    except (OSError, ValueError):
        return False


def session_text(s: Session, *, command: bool) -> str:
    if s.handle is None:
        who = "s?"
    elif s.is_password:
        who = "PW"
    else:
        who = f"0x{s.handle:08x}"
    text = f"{who}:{attrs_text(s.attributes)}"
    if s.facts is not None and not s.is_password:
        text += f" ({s.facts.text()})"
    if command and s.is_password:
        text += f" authValue({len(s.auth)}B) IN CLEAR" if s.auth else " empty-auth"
    return text


def param_text(f: Frame) -> str:
    p = f.tpm.param if f.tpm is not None else None
    if p is None or p.type_name is None:
        return f"param={Verdict.NA}"
    size = "" if p.size is None else f"({p.size}B)"
    text = f"param={p.type_name}{size}:{p.word}"
    if p.recovered is not None:
        text += f" recovered={p.recovered[:64].hex()}"
    return text


def ctrl_fields(info: CtrlInfo) -> str:
    parts = []
    for k, v in info.fields.items():
        if k == "json":
            continue
        parts.append(
            f"{k}={v:#x}" if isinstance(v, int) and k in ("flags", "state_flags") else f"{k}={v}"
        )
    return " ".join(parts)


def one_line(f: Frame) -> str:
    """The annotation written as the pcapng packet comment."""
    arrow = "cmd" if f.direction is Direction.COMMAND else "rsp"
    head = f"conn {f.conn} {arrow} {f.name}"
    parts = [head]
    if f.channel is Channel.CTRL and f.ctrl is not None:
        parts[0] = f"conn {f.conn} ctrl {arrow} CMD_{f.ctrl.name}"
        if f.ctrl.result is not None:
            parts.append(f"result=0x{f.ctrl.result:x}")
        fields = ctrl_fields(f.ctrl)
        if fields:
            parts.append(fields)
    elif f.tpm is not None:
        t = f.tpm
        if f.direction is Direction.RESPONSE:
            parts.append(f"rc=0x{t.code:08x} {t.rc_text}")
        if f.locality is not None:
            parts.append(f"loc={f.locality}")
        if t.handles:
            parts.append("h=" + ",".join(f"0x{h:08x}" for h in t.handles))
        if t.sessions:
            cmd = f.direction is Direction.COMMAND
            parts.append("s=[" + "; ".join(session_text(s, command=cmd) for s in t.sessions) + "]")
        if not t.header_only or t.param.type_name:
            parts.append(param_text(f))
        if t.header_only:
            parts.append("header-only")
    if f.framing.value == "mssim":
        parts.append("mssim")
    if f.error:
        parts.append(f"[{f.error}]")
    return " ".join(parts)
