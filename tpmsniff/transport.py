"""Transport: listeners, upstream connections and the relay. The only layer with sockets.

Each accepted client gets exactly one upstream connection. Bytes from the client go
through the channel state machine (which only decides *when* and *in what pieces* to
write, never what); bytes from upstream are written to the client as soon as they arrive,
unsplit. Frames are handed to the pipeline after the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from .addresses import Address
from .channels import MAX_QUEUED_REQUESTS, CtrlChannel, Event
from .model import Channel
from .pipeline import Pipeline
from .qemu import QemuCtrlSession, recv_with_fds
from .roles import detect_role
from .sinks.base import ConnInfo

log = structlog.get_logger("tpmsniff.relay")


class StartupError(Exception):
    """The daemon cannot start: the message is the one line the user sees."""


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


def check_unix_upstream(addr: Address) -> None:
    """Fail fast if a Unix upstream is not there. No connect: a swtpm with
    `--ctrl ...,terminate` would exit when the probe connection closed."""
    try:
        st = os.stat(addr.path)
    except OSError as exc:
        raise StartupError(f"upstream {addr}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"upstream {addr}: not a socket")


async def check_upstream(addr: Address, timeout: float = 3.0) -> None:
    if addr.kind == "unix":
        check_unix_upstream(addr)
        return
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), timeout)
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or "timed out"
        raise StartupError(f"upstream {addr}: {why}") from None
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()


def prepare_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse a live socket or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"listen unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise StartupError(f"listen unix:{path}: address already in use")


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
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


Connector = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[asyncio.BaseTransport, Any]]]


class _Client(asyncio.Protocol):
    def __init__(
        self,
        relay: Relay,
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
        self.up: _Upstream | None = None
        self.conn = 0
        self.peer = ""
        self.closed = False
        self.paused = False
        self._finished = False
        self._early: list[bytes] = []  # bytes that arrived before the upstream connected
        self._connecting: asyncio.Task | None = None

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
        transport.pause_reading()  # until upstream is connected
        self.relay.clients.add(self)
        # asyncio keeps only weak references to tasks: hold this one until it is done
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        r = self.relay
        try:
            _, up = await self._connector(lambda: _Upstream(self))
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
        ut = self.up.transport  # type: ignore[union-attr]
        for w in writes:
            ut.write(w)  # type: ignore[union-attr]
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


class Relay:
    """One listening endpoint relayed to one upstream endpoint.

    `role` is "data" (TPM data channel), "ctrl" (swtpm control channel), "qemu" (QEMU's
    control channel, with CMD_SET_DATAFD fd substitution) or "auto": each connection's
    role is then detected from its first read (see `roles.detect_role`).
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        machine: Callable[[], ChannelMachine],
        pipeline: Pipeline,
        counter: ConnCounter,
        *,
        role: str = "data",
        listen_mode: int | None = None,
        listen_owner: tuple[int, int] | None = None,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.machine = machine
        self.pipeline = pipeline
        self.counter = counter
        self.role = role
        self.listen_mode = listen_mode
        self.listen_owner = listen_owner
        self.clients: set[_Client] = set()
        self.sessions: set[Any] = set()  # QEMU control sessions
        self.server: asyncio.Server | None = None
        self._lsock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        pipeline.pressure_listeners.append(self._pressure)

    def _pressure(self, congested: bool) -> None:
        """Worker backpressure: stop reading clients while the capture queue is full."""
        for c in self.clients:
            if c.transport is None or c.up is None or c.closed:
                continue
            if congested:
                c.transport.pause_reading()
            else:
                c.resume()

    @property
    def busy(self) -> bool:
        return bool(self.clients or self.sessions)

    async def connect_upstream(self, factory: Callable[[], asyncio.Protocol]):
        loop = asyncio.get_running_loop()
        if self.upstream.kind == "unix":
            return await loop.create_unix_connection(factory, self.upstream.path)
        return await loop.create_connection(factory, self.upstream.host, self.upstream.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self.listen.kind == "unix":
                prepare_unix_path(self.listen.path)
            if self.role in ("auto", "qemu"):
                self._lsock = self._listen_socket()
                self._accepting = loop.create_task(self._accept_loop(self._lsock))
            elif self.listen.kind == "unix":
                self.server = await loop.create_unix_server(lambda: _Client(self), self.listen.path)
            else:
                self.server = await loop.create_server(
                    lambda: _Client(self), self.listen.host, self.listen.port, reuse_address=True
                )
            if self.listen.kind == "unix" and self.listen_mode is not None:
                os.chmod(self.listen.path, self.listen_mode)
            if self.listen.kind == "unix" and self.listen_owner is not None:
                os.chown(self.listen.path, *self.listen_owner)
        except OSError as exc:
            why = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            raise StartupError(f"listen {self.listen}: {why}") from None

    def _listen_socket(self) -> socket.socket:
        if self.listen.kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(self.listen.path)
        else:
            fam = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.listen.host, self.listen.port))
            except OSError:
                s.close()
                raise
        s.listen(64)
        s.setblocking(False)
        return s

    async def _accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except (OSError, asyncio.CancelledError):
                return
            sock.setblocking(False)
            task = loop.create_task(self._detect(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _detect(self, sock: socket.socket) -> None:
        """Read the first chunk (with any fds) and hand the connection to its role."""
        try:
            data, fds = await recv_with_fds(sock)
        except OSError as exc:
            log.warning("client read failed", error=exc.strerror or str(exc))
            sock.close()
            return
        if not data:
            sock.close()
            return
        role = detect_role(data, fds, self.role, sock.family == socket.AF_UNIX)
        if role == "qemu":
            session = QemuCtrlSession(self, sock, data, fds)
            self.sessions.add(session)
            await session.run()
            self.sessions.discard(session)
            return
        for fd in fds:
            os.close(fd)
        if role == "ctrl":
            machine: ChannelMachine = CtrlChannel()
        else:
            machine = self.machine()
        loop = asyncio.get_running_loop()
        _, proto = await loop.connect_accepted_socket(lambda: _Client(self, machine), sock)
        proto.data_received(data)  # buffered until the upstream is connected

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        if (self.server is not None or self._accepting is not None) and self.listen.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.listen.path)

    def close_all(self) -> None:
        for c in list(self.clients):
            if c.transport is not None:
                c.transport.close()
        for s in list(self.sessions):
            s.close()
