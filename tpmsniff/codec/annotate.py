"""Turns framed events into annotated `Frame`s: decoding, command/response pairing, locality.

Stateful but I/O-free: one `Annotator` per upstream TPM, because locality and sessions
(codec/sessions/) are properties of the TPM, not of one client connection.
"""

from __future__ import annotations

from collections import deque

from ..model import Channel, CtrlInfo, Direction, Event, Frame, Framing, TpmInfo
from . import ctrl
from .sessions import SessionTracker
from .tpm import decode_command, decode_response, with_recovered

# what decoding adds to a message: locality, TPM decode, control decode, error
_Parts = tuple[int | None, TpmInfo | None, CtrlInfo | None, str | None]


class Annotator:
    def __init__(self, auth: dict[int, bytes] | None = None) -> None:
        self.sessions = SessionTracker(auth)
        self._seq = 0
        self._commands: dict[int, deque[TpmInfo | None]] = {}
        self._ctrl_locality: dict[int, int] = {}  # conn -> requested locality
        self.locality: int | None = None  # last locality the TPM accepted

    def close(self, conn: int) -> None:
        self._commands.pop(conn, None)
        self._ctrl_locality.pop(conn, None)

    def annotate(self, conn: int, ts: float, ev: Event, number: int | None = None) -> Frame:
        """`number`: the input's own frame number (offline), else a running count."""
        self._seq += 1
        m = ev.message
        seq = self._seq if number is None else number
        try:
            locality, tpm, ctl, error = self._annotate(conn, ev)
        except Exception as exc:  # a decoder bug is an annotation, never a crash
            locality, tpm, ctl, error = None, None, None, f"internal decode error: {exc!r}"
        # one Frame per message, built once (no dataclasses.replace on the hot path)
        return Frame(
            seq, conn, ev.channel, ev.direction, ts, m.raw, m.framing, m.prefix,
            locality, tpm, ctl, error,
        )  # fmt: skip

    def _annotate(self, conn: int, ev: Event) -> _Parts:
        m = ev.message
        if ev.channel is Channel.CTRL:
            return self._ctrl(conn, ev)
        if m.framing is Framing.UNFRAMED:
            if ev.direction is Direction.RESPONSE:
                self._pop(conn)
            return None, None, None, f"unframed: {m.note}"
        body = m.raw[m.prefix :]
        if ev.direction is Direction.COMMAND:
            if m.locality is not None:
                self.locality = m.locality  # MS-sim locality persists in swtpm
            info, err = decode_command(body)
            if not info.header_only:
                info = with_recovered(self.sessions.on_command(conn, info, body))
            self._commands.setdefault(conn, deque()).append(info)
            return self.locality, info, None, err
        info, err = decode_response(body, self._pop(conn))
        if not info.header_only:
            info = with_recovered(self.sessions.on_response(conn, info, body))
        return self.locality, info, None, err

    def _pop(self, conn: int) -> TpmInfo | None:
        q = self._commands.get(conn)
        return q.popleft() if q else None

    def _ctrl(self, conn: int, ev: Event) -> _Parts:
        m = ev.message
        if ev.direction is Direction.COMMAND:
            info = ctrl.decode_request(m.raw)
            loc = info.fields.get("locality")
            if info.cmd == ctrl.Cmd.SET_LOCALITY and isinstance(loc, int):
                self._ctrl_locality[conn] = loc
        else:
            info = ctrl.decode_response(ev.ctrl_cmd, m.raw)
            if (
                ev.ctrl_cmd == ctrl.Cmd.SET_LOCALITY
                and info.result == 0
                and conn in self._ctrl_locality
            ):
                self.locality = self._ctrl_locality.pop(conn)
        err = f"unframed: {m.note}" if m.framing is Framing.UNFRAMED else None
        return None, None, info, err
