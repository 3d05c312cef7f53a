"""Per-connection protocol state machines (sans-IO) for TPM data and control channels.

The transport feeds bytes in and makes the writes these return; decoding happens later,
from the `Event`s, so the same machines serve the live relay, offline readers and tests.
"""

from __future__ import annotations

from collections import deque

from ..model import Channel, Direction, Event, Framing, Message
from .ctrl import CtrlRequestFramer, CtrlResponseFramer
from .framing import DEFAULT_MAX_MESSAGE, RequestFramer, ResponseFramer

MAX_QUEUED_REQUESTS = 8  # beyond this the transport stops reading the client


class DataChannel:
    """One client↔swtpm TPM data connection: whole requests, one outstanding at a time."""

    channel = Channel.TPM

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._requests = RequestFramer(max_message)
        self._responses = ResponseFramer(max_message)
        self._queue: deque[Message] = deque()
        self._waiting = False

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def from_client(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        msgs = self._requests.feed(data)
        if not msgs:
            return [], []
        if not self._waiting and not self._queue and len(msgs) == 1:
            return self._send(msgs[0])  # fast path
        self._queue.extend(msgs)
        return self._pump()

    def from_server(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        events = [Event(Channel.TPM, Direction.RESPONSE, m) for m in self._responses.feed(data)]
        if events and self._responses.outstanding == 0:
            self._waiting = False
        if self._queue and not self._waiting:
            writes, more = self._pump()
            return writes, events + more
        return [], events

    def client_eof(self) -> tuple[list[bytes], list[Event]]:
        """At client EOF: release queued and partial requests (they are forwarded as is)."""
        writes: list[bytes] = []
        events: list[Event] = []
        tail = self._requests.flush()
        if tail is not None:
            self._queue.append(tail)
        while self._queue:
            m = self._queue.popleft()
            writes.append(m.raw)
            events.append(Event(Channel.TPM, Direction.COMMAND, m))
        return writes, events

    def server_eof(self) -> list[Event]:
        tail = self._responses.flush()
        return [Event(Channel.TPM, Direction.RESPONSE, tail)] if tail is not None else []

    def _send(self, m: Message) -> tuple[list[bytes], list[Event]]:
        if m.framing is not Framing.UNFRAMED:
            self._responses.expect(m.framing)
            self._waiting = True
        return [m.raw], [Event(Channel.TPM, Direction.COMMAND, m)]

    def _pump(self) -> tuple[list[bytes], list[Event]]:
        writes: list[bytes] = []
        events: list[Event] = []
        while self._queue and not self._waiting:
            w, e = self._send(self._queue.popleft())
            writes += w
            events += e
        return writes, events


class CtrlChannel:
    """One client↔swtpm control connection (TSS ctrl port, swtpm_ioctl, QEMU)."""

    channel = Channel.CTRL
    backlog = 0

    def __init__(self) -> None:
        self._requests = CtrlRequestFramer()
        self._responses = CtrlResponseFramer()

    def from_client(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        writes, msgs = self._requests.feed(data)
        events = []
        for m in msgs:
            cmd = int.from_bytes(m.raw[0:4], "big")
            self._responses.expect(cmd)
            events.append(Event(Channel.CTRL, Direction.COMMAND, m, cmd))
        return writes, events

    def from_server(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        return [], [
            Event(Channel.CTRL, Direction.RESPONSE, m, cmd) for cmd, m in self._responses.feed(data)
        ]

    def client_eof(self) -> tuple[list[bytes], list[Event]]:
        tail = self._requests.flush()
        if tail is None:
            return [], []
        unsent, m = tail
        return ([unsent] if unsent else []), [Event(Channel.CTRL, Direction.COMMAND, m)]

    def server_eof(self) -> list[Event]:
        tail = self._responses.flush()
        if tail is None:
            return []
        cmd, m = tail
        return [Event(Channel.CTRL, Direction.RESPONSE, m, cmd)]


def channel_for(role: str, max_message: int = DEFAULT_MAX_MESSAGE) -> DataChannel | CtrlChannel:
    """The state machine for a connection of `role` ("ctrl", or anything else: data)."""
    return CtrlChannel() if role == "ctrl" else DataChannel(max_message)
