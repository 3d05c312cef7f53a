"""One relayed connection: the client protocol, its upstream protocol and what they need
from the relay that accepted them (`RelayContext`).

Each accepted client gets exactly one upstream connection. Bytes from the client go
through the channel state machine (which only decides *when* and *in what pieces* to
write, never what); bytes from upstream are written to the client as soon as they arrive,
unsplit. Events are handed to the pipeline after the write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..codec.channels import MAX_QUEUED_BYTES
from ..model import Channel, ConnInfo, Event, EventSink
from .addresses import Address
from .limits import RateLimited, guarded

if TYPE_CHECKING:
    from .native import NativeRelay

log = structlog.get_logger("tpmsniff.relay")

# Every client read lands here and is copied out before the next read (reads are
# synchronous: get_buffer, recv, buffer_updated), so no read exceeds MAX_QUEUED_BYTES and
# an idle connection costs no buffer.
_READ_BUF = bytearray(MAX_QUEUED_BYTES)
_relay_errors = RateLimited(log, "relay error; connection goes on unframed")
_connect_errors = RateLimited(log, "upstream connect failed; closing client", interval=1.0)


class ChannelMachine(Protocol):
    channel: Channel

    @property
    def backlog(self) -> int: ...

    @property
    def buffered(self) -> int: ...

    @property
    def full(self) -> bool: ...

    @property
    def hungry(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    @property
    def waiting(self) -> bool: ...

    def from_client(self, data: bytes) -> tuple[list[bytes], list[Event]]: ...

    def from_server(self, data: bytes) -> tuple[list[bytes], list[Event]]: ...

    def client_eof(self) -> tuple[list[bytes], list[Event]]: ...

    def server_eof(self) -> list[Event]: ...


class ConnCounter:
    """Connection ids shared by every listener of one daemon (unique in the capture)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


class Passthrough:
    """The machine a connection falls back to if its own raised: bytes still go through
    unchanged, in the pieces they came in; nothing more is decoded."""

    backlog = 0
    buffered = 0
    full = False
    hungry = True
    done = True
    waiting = False

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def from_client(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        return [data], []

    def from_server(self, data: bytes) -> tuple[list[bytes], list[Event]]:
        return [], []

    def client_eof(self) -> tuple[list[bytes], list[Event]]:
        return [], []

    def server_eof(self) -> list[Event]:
        return []


class Guarded:
    """Runs a connection's channel machine: if the machine raises (a bug), the error is
    logged (rate-limited, `machine_errors`) and the connection is relayed byte for byte
    from then on. A client (or QEMU's VM) must not pay for a decoder bug."""

    sm: ChannelMachine
    conn: int
    machine_errors: RateLimited

    def machine_call(
        self, call: Callable[[], tuple[list[bytes], list[Event]]], data: bytes | None
    ) -> tuple[list[bytes], list[Event]]:
        """`data`: the client bytes to pass on if the machine fails on them."""
        try:
            return call()
        except Exception as exc:
            self.machine_errors.warning(conn=self.conn, error=repr(exc))
            self.sm = Passthrough(self.sm.channel)
            return ([data] if data else []), []


Connector = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]


class RelayContext(Protocol):
    """What a connection needs from the relay that accepted it."""

    listen: Address
    upstream: Address
    pipeline: EventSink
    counter: ConnCounter
    clients: set[ClientConn]
    native: NativeRelay | None

    def machine(self) -> ChannelMachine: ...

    async def connect_upstream(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, Any]: ...


class Upstream(asyncio.Protocol):
    """The swtpm side of one relayed connection: forwards responses first, unsplit."""

    def __init__(self, client: ClientConn) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        c = self.client
        if c.transport is not None and not c.closed:
            c.transport.write(data)  # forward first, unsplit
        writes, events = c.machine_call(lambda: c.sm.from_server(data), None)
        for w in writes:
            self.transport.write(w)  # type: ignore[union-attr]
        c.publish(events)
        if c.eof:
            c.maybe_shut_upstream()
        elif c.paused and c.sm.hungry:
            c.paused = False
            c.resume()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume()


class ClientConn(Guarded, asyncio.BufferedProtocol):
    """The client side of one relayed connection and its channel state machine.

    Reads are at most MAX_QUEUED_BYTES, and reading stops while the machine is `full`, so
    what a client sends beyond that waits in the kernel."""

    machine_errors = _relay_errors

    def __init__(
        self,
        relay: RelayContext,
        machine: ChannelMachine | None = None,
        connect: Connector | None = None,
        peer: str | None = None,
        upstream: str | None = None,
    ) -> None:
        self.relay = relay
        self.sm: ChannelMachine = machine or relay.machine()
        self._connector = connect or relay.connect_upstream
        self._peer_text = peer
        self.upstream_text = upstream or str(relay.upstream)
        self.transport: asyncio.Transport | None = None
        self.up: Upstream | None = None
        self.conn = 0
        self.peer = ""
        self.closed = False  # the client is gone (reset, or it could not take a response)
        self.eof = False  # the client's read side ended: its queued requests still go
        self.paused = False
        self._finished = False
        self._early: list[bytes] = []  # bytes that arrived before the upstream connected
        self._connecting: asyncio.Task[None] | None = None
        self._eof_early = False  # EOF read before the upstream was up
        self._shut = False  # the client's EOF was passed on upstream
        self.draining = False  # a stop began: no more requests are read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn = self.relay.counter.next()
        peer = transport.get_extra_info("peername")
        if self._peer_text:
            self.peer = self._peer_text
        elif isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = f"unix:{self.relay.listen.path}"
        transport.pause_reading()  # type: ignore[attr-defined]  # until upstream is up
        self.relay.clients.add(self)
        # asyncio keeps only weak references to tasks: hold this one until it is done
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        r = self.relay
        try:
            _, up = await self._connector(lambda: Upstream(self))
        except OSError as exc:
            _connect_errors.warning(
                conn=self.conn, upstream=self.upstream_text, error=exc.strerror or str(exc)
            )
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            r.clients.discard(self)
            return
        self.up = up
        log.info(
            "connection opened",
            conn=self.conn,
            channel=str(self.sm.channel),
            peer=self.peer,
            upstream=self.upstream_text,
        )
        info = ConnInfo(self.conn, self.sm.channel, self.peer, self.upstream_text, time.time())
        guarded(lambda: r.pipeline.conn_open(info))
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self.closed:  # the client was gone before the upstream was up
            self.close_upstream()
            return
        if self._eof_early:
            self._client_eof()
        self.resume()

    def resume(self) -> None:
        """Read the client again, unless its own queue or the capture worker is full."""
        if (
            self.transport is not None
            and not self.paused
            and not self.eof
            and not self.draining
            and not self.relay.pipeline.congested
        ):
            self.transport.resume_reading()

    @property
    def busy(self) -> bool:
        """A request outstanding: forwarded upstream and its response not yet all written
        to the client (or, after the client's EOF, still to go). Open alone is not busy:
        QEMU holds its data connection for the VM's life."""
        if self.closed or self._finished or self.up is None:
            return False
        t = self.transport
        return (
            self.sm.waiting
            or (self.eof and not self._shut)
            or (t is not None and t.get_write_buffer_size() > 0)
        )

    def drain(self) -> None:
        """A stop begins: read no more requests (those outstanding still finish)."""
        self.draining = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    # -- reading the client (BufferedProtocol) -----------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        room = MAX_QUEUED_BYTES - self.sm.buffered - sum(map(len, self._early))
        return memoryview(_READ_BUF)[: max(room, 1)]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_READ_BUF[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.up is None:  # reading is paused, but one read may already be in flight
            self._early.append(data)
            return
        writes, events = self.machine_call(lambda: self.sm.from_client(data), data)
        ut = self.up.transport
        assert ut is not None  # set in connection_made, before self.up is
        for w in writes:
            ut.write(w)
        self.publish(events)
        if self.sm.full and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def publish(self, events: list[Event]) -> None:
        """Hand events to the pipeline; nothing it raises reaches the relay."""
        if events:
            guarded(lambda: self.relay.pipeline.events(self.conn, time.time(), events))

    def eof_received(self) -> bool:
        self._client_eof()
        return True  # keep writing: a client that half-closed still reads its responses

    def _client_eof(self) -> None:
        """End of stream (docs/protocols.md): nothing is dropped; what is queued still
        goes one request at a time, each response to the client, then the EOF is passed
        on and swtpm closes."""
        if self.up is None:
            self._eof_early = True  # _connect passes it on
            return
        if self.eof:
            return
        self.eof = True
        ut = self.up.transport
        if ut is None or ut.is_closing():
            return
        writes, events = self.machine_call(self.sm.client_eof, None)
        for w in writes:
            ut.write(w)
        self.publish(events)
        self.maybe_shut_upstream()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self.closed = True  # gone: a reset, or a response it could not take
        if self.up is None:
            return  # _connect finishes the job (or the upstream never came)
        self.close_upstream()  # at once, as swtpm's own connection would be

    def maybe_shut_upstream(self) -> None:
        """After client EOF: once the machine has nothing left to send or wait for, pass
        the EOF on (swtpm answers what it has read, then closes: upstream_lost)."""
        ut = self.up.transport if self.up is not None else None
        if self._shut or not self.sm.done or ut is None or ut.is_closing():
            return
        self._shut = True
        if ut.can_write_eof():
            ut.write_eof()
        else:
            ut.close()

    def close_upstream(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()  # connection_lost -> upstream_lost -> _finish

    def abort(self) -> None:
        """Stop now (daemon shutdown): both sides, whatever is buffered."""
        for t in (self.transport, self.up.transport if self.up is not None else None):
            if t is not None:
                t.abort()

    def upstream_lost(self, exc: Exception | None) -> None:
        """swtpm closed: the client gets every byte it sent (close() flushes), then EOF."""
        events = self.machine_call(lambda: ([], self.sm.server_eof()), None)[1]
        self.publish(events)
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._finish()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.relay.clients.discard(self)
        if self.up is not None:
            log.info("connection closed", conn=self.conn)
            guarded(lambda: self.relay.pipeline.conn_close(self.conn, time.time()))
