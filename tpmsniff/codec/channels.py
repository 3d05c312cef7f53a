"""Per-connection protocol state machines (sans-IO) for TPM data and control channels.

The transport feeds bytes in and makes the writes these return; decoding happens later,
from the `Event`s, so the same machines serve the live relay, offline readers and tests.
"""

from __future__ import annotations

from collections import deque

from ..model import Channel, Direction, Event, Framing, Message
from .ctrl import CtrlRequestFramer, CtrlResponseFramer
from .framing import DEFAULT_MAX_MESSAGE, RequestFramer, ResponseFramer

MAX_QUEUED_REQUESTS = 8  # framed requests waiting per client; then reading stops
MAX_QUEUED_BYTES = 64 << 10  # bytes held per client (framed or not); then reading stops


class DataChannel:
    """One client↔swtpm TPM data connection: whole requests, one outstanding at a time.

    Requests are framed lazily: at most MAX_QUEUED_REQUESTS wait as messages, the rest of
    a read stays as bytes (`buffered`), and the transport reads no more while `full`. So
    a client that writes without reading holds at most ~64 KiB here and leaves the rest
    in the kernel. Each request is its own write, sent after the previous response, also
    after the client's EOF (`done` says when nothing is left to send or wait for).
    """

    channel = Channel.TPM

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._requests = RequestFramer(max_message)
        self._responses = ResponseFramer(max_message)
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._waiting = False
        self._eof = False

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def buffered(self) -> int:
        """Client bytes held (queued requests and not yet framed bytes)."""
        return self._queued_bytes + self._requests.pending

    @property
    def full(self) -> bool:
        """Stop reading the client: enough is queued."""
        return len(self._queue) >= MAX_QUEUED_REQUESTS or self.buffered >= MAX_QUEUED_BYTES

    @property
    def hungry(self) -> bool:
        """Read the client again: the queue has drained to half."""
        return (
            len(self._queue) <= MAX_QUEUED_REQUESTS // 2 and self.buffered <= MAX_QUEUED_BYTES // 2
        )

    @property
    def waiting(self) -> bool:
        """A request was sent upstream and its response is not complete yet."""
        return self._waiting

    @property
    def done(self) -> bool:
        """After client EOF: every request was sent and answered (or never will be)."""
        return self._eof and not self._waiting and not self._queue and not self._requests.pending

    def from_client(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        if not self._waiting and not self._queue:
            m = self._requests.one(data)  # fast path: usually one whole command per read
            if m is not None:
                return self._send(m)
        self._requests.add(data)
        return self._pump()

    def from_server(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        events = [Event(Channel.TPM, Direction.RESPONSE, m) for m in self._responses.feed(data)]
        if events and self._responses.outstanding == 0:
            self._waiting = False
        if not self._waiting:
            writes, more = self._pump()
            return writes, events + more
        return [], events

    def client_eof(self) -> tuple[list[bytes], list[Event]]:
        """At client EOF: the rest is still sent one request at a time (a partial request
        last, as is); the first of them now unless a response is awaited."""
        self._eof = True
        return self._pump()

    def server_eof(self) -> list[Event]:
        self._waiting = False
        self._queue.clear()  # nobody left to send them to
        self._queued_bytes = 0
        self._requests.flush()
        tail = self._responses.flush()
        return [Event(Channel.TPM, Direction.RESPONSE, tail)] if tail is not None else []

    def _enqueue(self, msgs: list[Message]) -> None:
        for m in msgs:
            self._queue.append(m)
            self._queued_bytes += len(m.raw)

    def _frame(self) -> None:
        """Frame buffered bytes until the queue holds MAX_QUEUED_REQUESTS."""
        while len(self._queue) < MAX_QUEUED_REQUESTS:
            m = self._requests.next()
            if m is None:
                if self._eof:
                    m = self._requests.flush()
                if m is None:
                    return
            self._enqueue([m])

    def _send(self, m: Message) -> tuple[list[bytes], list[Event]]:
        if m.framing is not Framing.UNFRAMED:
            self._responses.expect(m.framing)
            self._waiting = True
        return [m.raw], [Event(Channel.TPM, Direction.COMMAND, m)]

    def _pump(self) -> tuple[list[bytes], list[Event]]:
        """Send queued requests while no response is awaited (unframed ones expect none,
        so several may go, each in its own write)."""
        writes: list[bytes] = []
        events: list[Event] = []
        self._frame()
        while self._queue and not self._waiting:
            m = self._queue.popleft()
            self._queued_bytes -= len(m.raw)
            w, e = self._send(m)
            writes += w
            events += e
            self._frame()
        return writes, events


class CtrlChannel:
    """One client↔swtpm control connection (TSS ctrl port, swtpm_ioctl, QEMU)."""

    channel = Channel.CTRL
    backlog = 0
    buffered = 0
    full = False  # every request is forwarded as soon as it is whole
    hungry = True
    done = True

    def __init__(self) -> None:
        self._requests = CtrlRequestFramer()
        self._responses = CtrlResponseFramer()

    @property
    def waiting(self) -> bool:
        """A request was forwarded and its response is not complete yet."""
        return self._responses.pending > 0

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
