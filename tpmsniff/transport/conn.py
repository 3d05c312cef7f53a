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
from typing import Any, Protocol

import structlog

from ..codec.channels import MAX_QUEUED_REQUESTS
from ..model import Channel, ConnInfo, Event, EventSink
from .addresses import Address

log = structlog.get_logger("tpmsniff.relay")


class ChannelMachine(Protocol):
    channel: Channel

    @property
    def backlog(self) -> int: ...

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


Connector = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]


class RelayContext(Protocol):
    """What a connection needs from the relay that accepted it."""

    listen: Address
    upstream: Address
    pipeline: EventSink
    counter: ConnCounter
    clients: set[ClientConn]

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
        writes, events = c.sm.from_server(data)
        for w in writes:
            self.transport.write(w)  # type: ignore[union-attr]
        if events:
            c.relay.pipeline.events(c.conn, time.time(), events)
        if c.paused and c.sm.backlog < MAX_QUEUED_REQUESTS // 2:
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


class ClientConn(asyncio.Protocol):
    """The client side of one relayed connection and its channel state machine."""

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
        self.closed = False
        self.paused = False
        self._finished = False
        self._early: list[bytes] = []  # bytes that arrived before the upstream connected
        self._connecting: asyncio.Task[None] | None = None

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
            log.warning(
                "upstream connect failed; closing client",
                conn=self.conn,
                upstream=self.upstream_text,
                error=exc.strerror or str(exc),
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
        r.pipeline.conn_open(
            ConnInfo(self.conn, self.sm.channel, self.peer, self.upstream_text, time.time())
        )
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self.closed:  # the client left before the upstream was up: pass its EOF on
            self.connection_lost(None)
            return
        self.resume()

    def resume(self) -> None:
        """Read the client again, unless its own queue or the capture worker is full."""
        if self.transport is not None and not self.paused and not self.relay.pipeline.congested:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.up is None:  # reading is paused, but one read may already be in flight
            self._early.append(data)
            return
        writes, events = self.sm.from_client(data)
        ut = self.up.transport
        assert ut is not None  # set in connection_made, before self.up is
        for w in writes:
            ut.write(w)
        if events:
            self.relay.pipeline.events(self.conn, time.time(), events)
        if self.sm.backlog >= MAX_QUEUED_REQUESTS and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # half-close is not used by any client: treat as full close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.up is None:
            return  # _connect finishes the job (or the upstream never came)
        if self.up.transport is not None:
            writes, events = self.sm.client_eof()
            for w in writes:
                self.up.transport.write(w)
            if events:
                self.relay.pipeline.events(self.conn, time.time(), events)
            self.up.transport.close()
        self._finish()

    def upstream_lost(self, exc: Exception | None) -> None:
        events = self.sm.server_eof()
        if events:
            self.relay.pipeline.events(self.conn, time.time(), events)
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
            self.relay.pipeline.conn_close(self.conn, time.time())
