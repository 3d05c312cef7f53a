"""The relay: one listening endpoint relayed to one upstream endpoint.

It accepts clients, detects each connection's role in auto mode, and hands each to a
`ClientConn` (data or control) or a `QemuCtrlSession`. Transport is the only layer with
sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

import structlog

from ..codec.channels import channel_for
from ..codec.roles import detect_role
from ..model import EventSink
from .addresses import Address
from .conn import ChannelMachine, ClientConn, ConnCounter
from .endpoints import connect_upstream, prepare_unix_path
from .errors import StartupError
from .fdpass import recv_with_fds
from .limits import RateLimited
from .native import NativeRelay
from .qemu import QemuCtrlSession

log = structlog.get_logger("tpmsniff.relay")

DEFAULT_MAX_CONNECTIONS = 128
LISTEN_BACKLOG = 128
# accept() failures that say "not now" (out of fds, buffers or memory; a client that left
# before we took it): back off briefly and accept again. Anything else is logged too, and
# accepting goes on all the same.
ACCEPT_TRANSIENT = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
    errno.ECONNABORTED,
    errno.EPROTO,
    errno.EPERM,
    errno.EINTR,
}
ACCEPT_BACKOFF = 0.05  # s, doubling up to ACCEPT_BACKOFF_MAX while accept keeps failing
ACCEPT_BACKOFF_MAX = 1.0


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
        pipeline: EventSink,
        counter: ConnCounter,
        *,
        role: str = "data",
        listen_mode: int | None = None,
        listen_owner: tuple[int, int] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        native: NativeRelay | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.listen = listen
        self._given = sock  # a listening socket passed by systemd: used as it is
        self.upstream = upstream
        self.machine = machine
        self.pipeline = pipeline
        self.counter = counter
        self.role = role
        self.listen_mode = listen_mode
        self.listen_owner = listen_owner
        self.native = native  # relays TPM data connections in C (--relay native)
        self.clients: set[ClientConn] = set()
        self.sessions: set[QemuCtrlSession] = set()
        self._lsock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: set[socket.socket] = set()  # accepted, not (yet) owned by a ClientConn
        self.max_connections = max_connections
        self.accept_errors = RateLimited(log, "accept failed; backing off")
        self.refused = RateLimited(log, "connection limit reached; closing new connections")
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
        """A request is outstanding on one of this relay's connections (forwarded, its
        response not yet all relayed): what a stop waits for. Connections that are only
        open (QEMU always holds one) do not count."""
        return (
            any(c.busy for c in self.clients)
            or any(s.busy for s in self.sessions)
            or (self.native is not None and self.native.busy)
        )

    @property
    def active(self) -> int:
        """Connections held: relayed clients, and those being detected or run as QEMU
        control sessions."""
        native = self.native.active if self.native is not None else 0
        return len(self.clients) + len(self._held) + native

    async def connect_upstream(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, Any]:
        sock = await connect_upstream(self.upstream)
        try:
            return await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
        except BaseException:
            sock.close()
            raise

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._given is not None:  # systemd made it (SocketMode=, SocketUser=): as is
            self._lsock = self._given
            self._accepting = loop.create_task(self._accept_loop(self._lsock))
            return
        try:
            if self.listen.kind == "unix":
                prepare_unix_path(self.listen.path)
            # every mode accepts through _accept_loop, so EMFILE & co and
            # --max-connections are handled (and logged) the same way everywhere
            self._lsock = self._listen_socket()
            self._accepting = loop.create_task(self._accept_loop(self._lsock))
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
        s.listen(LISTEN_BACKLOG)
        s.setblocking(False)
        return s

    async def _accept_loop(self, lsock: socket.socket) -> None:
        """Accept until stopped; no error ends it (see ACCEPT_TRANSIENT)."""
        loop = asyncio.get_running_loop()
        backoff = ACCEPT_BACKOFF
        while self._lsock is not None:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                return
            except OSError as exc:
                if self._lsock is None:
                    return  # stop_accepting closed it
                self.accept_errors.warning(
                    listen=str(self.listen),
                    error=exc.strerror or str(exc),
                    transient=exc.errno in ACCEPT_TRANSIENT,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                continue
            backoff = ACCEPT_BACKOFF
            self._take(sock)

    def _take(self, sock: socket.socket) -> None:
        """An accepted connection: closed at once beyond --max-connections, else detected."""
        if self.active >= self.max_connections:
            self.refused.warning(listen=str(self.listen), limit=self.max_connections)
            sock.close()
            return
        sock.setblocking(False)
        self._held.add(sock)
        work = self._detect(sock) if self.role in ("auto", "qemu") else self._relay(sock)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, sock: socket.socket) -> None:
        """A connection of a fixed role (data or ctrl): relayed from its first byte."""
        if self.role == "data" and self.native is not None:
            await self._native(sock, b"")
            return
        machine = channel_for("ctrl") if self.role == "ctrl" else self.machine()
        self._held.discard(sock)  # the ClientConn counts from connection_made on
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: ClientConn(self, machine), sock
            )
        except Exception as exc:
            log.warning("client dropped", error=repr(exc))
            sock.close()

    async def _detect(self, sock: socket.socket) -> None:
        """Read the first chunk (with any fds) and hand the connection to its role."""
        try:
            await self._hand_on(sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:  # nothing a client sends may end the accept loop's work
            log.warning("client dropped", error=repr(exc))
            sock.close()
        finally:
            self._held.discard(sock)

    async def _hand_on(self, sock: socket.socket) -> None:
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
        if role == "data" and self.native is not None:
            await self._native(sock, data)
            return
        machine: ChannelMachine = channel_for("ctrl") if role == "ctrl" else self.machine()
        self._held.discard(sock)
        loop = asyncio.get_running_loop()
        _, proto = await loop.connect_accepted_socket(lambda: ClientConn(self, machine), sock)
        proto.data_received(data)  # buffered until the upstream is connected

    async def _native(self, sock: socket.socket, data: bytes) -> None:
        """A TPM data connection for the C relay (it counts in `native.active` from then)."""
        assert self.native is not None
        try:
            peer = sock.getpeername()
        except OSError:  # reset already: what it sent before still goes (protocols.md)
            peer = None if sock.family == socket.AF_UNIX else ("?", "?")
        text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else f"unix:{self.listen.path}"
        conn = self.counter.next()
        try:
            await self.native.hand_over(sock, data, conn, text, self.upstream)
        except BaseException:
            sock.close()
            raise
        finally:
            self._held.discard(sock)

    def stop_accepting(self) -> None:
        """A stop begins: accept nothing more and read no new request from the
        connections (those outstanding still finish: `busy`)."""
        for c in self.clients:
            c.drain()
        if self.native is not None:
            self.native.drain()
        if self._accepting is not None:
            self._accepting.cancel()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
        if self._accepting is not None and self.listen.kind == "unix" and self._given is None:
            with contextlib.suppress(OSError):  # a passed socket's path is systemd's
                os.unlink(self.listen.path)

    def close_all(self) -> None:
        """Shutdown: drop every connection now, whatever is still buffered."""
        if self.native is not None:
            self.native.close_all()
        for c in list(self.clients):
            c.abort()
        for s in list(self.sessions):
            s.close()
        for t in list(self._tasks):
            t.cancel()
