"""The native data-channel relay (`--relay auto`, the default, and `--relay native`):
Python accepts, detects the role and connects upstream, then hands both sockets of a TPM
data connection to a C epoll thread (tpmsniff/_native/relay.c) that relays them by the
same rules as `DataChannel` (and the same end-of-stream policy, docs/protocols.md) and
makes records already encoded for the capture worker.

Records reach Python in batches: the C thread signals an eventfd (every 20 ms, or at once
for 256 KiB), and `_take` swaps the C buffer out (the C lock is held for the swap only,
never while Python runs), copies it once into bytes and hands it to the pipeline. The
data channel QEMU hands over (CMD_SET_DATAFD) goes the same way (`hand_over` with a
connected socket); control channels stay in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from .._native import NativeUnavailable, load
from ..model import Channel, ConnInfo, Direction, Event, EventSink, Framing
from .addresses import Address
from .endpoints import connect_upstream
from .errors import StartupError
from .limits import guarded

log = structlog.get_logger("tpmsniff.relay")

CLOSE_RETRY = 0.01  # s: tn_close_conn could not queue the request (out of memory)


class EncodedSink(EventSink, Protocol):
    def encoded(self, data: bytes, frames: int) -> None:
        """Whole records, encoded as pipeline/records.py does, with length prefixes."""
        ...


class Pipeline(EncodedSink, Protocol):
    """What the daemon's pipeline offers besides events (pipeline/interface.py's
    FramePipeline, seen from the transport layer, which may not import it)."""

    @property
    def frames_seen(self) -> int: ...

    async def started(self) -> None: ...

    def control(self, what: str) -> None: ...

    @property
    def exit_code(self) -> int: ...

    def close(self) -> int: ...


class NativeConn:
    """A connection the C thread relays, as the code that opened it sees it (QEMU's
    control session closes its data bridge when the fd is replaced or refused)."""

    def __init__(self, relay: NativeRelay, conn: int) -> None:
        self.relay = relay
        self.conn = conn

    def close(self) -> None:
        self.relay.close_conn(self.conn)


class NativeRelay:
    """One C relay thread shared by the daemon's data-channel listeners."""

    def __init__(self, pipeline: EncodedSink, max_message: int) -> None:
        try:
            mod = load()
        except NativeUnavailable as exc:
            raise StartupError(str(exc)) from None
        self._ffi, self._lib = mod.ffi, mod.lib
        self.pipeline = pipeline
        self.max_message = max_message
        chans, dirs, frs = list(Channel), list(Direction), list(Framing)
        codes = bytes(
            [
                chans.index(Channel.TPM),
                dirs.index(Direction.COMMAND),
                dirs.index(Direction.RESPONSE),
                frs.index(Framing.RAW),
                frs.index(Framing.MSSIM),
                frs.index(Framing.UNFRAMED),
            ]
        )
        h = self._lib.tn_new(codes)
        if h == self._ffi.NULL:
            raise StartupError("native relay: could not start its thread")
        self._h: object | None = h
        self._note = int(self._lib.tn_notefd(h))
        self._batch = self._ffi.new("tn_batch *")
        self._lost = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._note, self._noted)
        pipeline.pressure_listeners.append(self._pressure)
        if pipeline.congested:
            self._pressure(True)

    @property
    def active(self) -> int:
        """Connections the C thread still relays."""
        return int(self._lib.tn_active(self._h)) if self._h is not None else 0

    @property
    def busy(self) -> bool:
        """A request is outstanding: forwarded, its response not yet all written to the
        client (an open connection alone is not busy)."""
        return self._h is not None and int(self._lib.tn_busy(self._h)) > 0

    @property
    def lost(self) -> int:
        """Records the C thread could not make (out of memory): the capture is not whole."""
        if self._h is not None:
            self._lost = int(self._lib.tn_lost(self._h))
        return self._lost

    def _pressure(self, congested: bool) -> None:
        if self._h is not None:
            self._lib.tn_pause(self._h, int(congested))

    def drain(self) -> None:
        """A stop begins: no client is read any more; requests outstanding finish."""
        if self._h is not None:
            self._lib.tn_drain(self._h)

    async def hand_over(
        self,
        sock: socket.socket,
        early: bytes,
        conn: int,
        peer: str,
        upstream: Address | Callable[[], Awaitable[socket.socket]],
        upstream_text: str | None = None,
    ) -> NativeConn | None:
        """Connect upstream (an address, or a callable that gives the connected socket)
        for the client `sock` (whose first bytes are `early`) and let the C thread relay
        the pair; None if it could not start (both sockets are closed then)."""
        text = upstream_text or str(upstream)
        try:
            if isinstance(upstream, Address):
                up = await connect_upstream(upstream)
            else:
                up = await upstream()
        except OSError as exc:
            log.warning(
                "upstream connect failed; closing client",
                conn=conn,
                upstream=text,
                error=exc.strerror or str(exc),
            )
            sock.close()
            return None
        for s in (sock, up):
            if s.family != socket.AF_UNIX:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("connection opened", conn=conn, channel="tpm", peer=peer, upstream=text)
        self.sync()
        info = ConnInfo(conn, Channel.TPM, peer, text, time.time())
        guarded(lambda: self.pipeline.conn_open(info))
        if self._h is None:  # closed meanwhile
            sock.close()
            up.close()
            guarded(lambda: self.pipeline.conn_close(conn, time.time()))
            return None
        cfd, ufd = sock.detach(), up.detach()
        if self._lib.tn_add(self._h, cfd, ufd, conn, self.max_message, early, len(early)) < 0:
            os.close(cfd)
            os.close(ufd)
            log.warning("native relay: out of memory; connection closed", conn=conn)
            guarded(lambda: self.pipeline.conn_close(conn, time.time()))
            return None
        return NativeConn(self, conn)

    def close_conn(self, conn: int) -> None:
        """Close connection `conn` at once, if the C thread still relays it."""
        if self._h is not None and self._lib.tn_close_conn(self._h, conn) < 0:
            self._loop.call_later(CLOSE_RETRY, self.close_conn, conn)

    def sync(self) -> None:
        """Take every record the C thread has made so far (before Python writes one of its
        own: the capture stays in the order things crossed the relay)."""
        if self._h is not None:
            self._take()

    def _noted(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._note, 8)
        self._take()

    def _take(self) -> None:
        b = self._batch
        if not self._lib.tn_take(self._h, b):
            return
        try:
            data = self._ffi.buffer(b.data, b.len)[:] if b.len else b""
            frames = int(b.frames)
            closed = self._ffi.buffer(b.closed, 8 * b.nclosed)[:] if b.nclosed else b""
        finally:
            self._lib.tn_batch_free(b)
        for i in range(0, len(closed), 8):
            log.info("connection closed", conn=int.from_bytes(closed[i : i + 8], "little"))
        if data:
            guarded(lambda: self.pipeline.encoded(data, frames))

    def close_all(self) -> None:
        """Close every connection at once (shutdown: what is queued is dropped)."""
        if self._h is not None:
            self._lib.tn_close_all(self._h)

    def close(self) -> None:
        """Stop the thread and hand every record it made to the pipeline."""
        if self._h is None:
            return
        self._lib.tn_stop(self._h)
        self._loop.remove_reader(self._note)
        self._take()
        lost = self.lost
        if lost:
            log.warning("native relay could not record messages", lost=lost)
        self._lib.tn_free(self._h)
        self._h = None


class Ordered:
    """The pipeline as the Python side of the relay sees it when a native relay runs:
    each record Python writes (control channels, opens, SIGHUP's reopen) first takes the
    native relay's records made before it."""

    def __init__(self, inner: Pipeline, native: NativeRelay) -> None:
        self._inner = inner
        self._native = native

    @property
    def congested(self) -> bool:
        return self._inner.congested

    @property
    def pressure_listeners(self) -> list[Callable[[bool], None]]:
        return self._inner.pressure_listeners

    @property
    def frames_seen(self) -> int:
        return self._inner.frames_seen

    @property
    def exit_code(self) -> int:
        return self._inner.exit_code

    async def started(self) -> None:
        await self._inner.started()

    def conn_open(self, info: ConnInfo) -> None:
        self._native.sync()
        self._inner.conn_open(info)

    def events(
        self, conn: int, ts: float, events: Sequence[Event], number: int | None = None
    ) -> None:
        self._native.sync()
        self._inner.events(conn, ts, events, number)

    def conn_close(self, conn: int, ts: float) -> None:
        self._native.sync()
        self._inner.conn_close(conn, ts)

    def encoded(self, data: bytes, frames: int) -> None:
        self._native.sync()
        self._inner.encoded(data, frames)

    def control(self, what: str) -> None:
        self._native.sync()
        self._inner.control(what)

    def close(self) -> int:
        self._native.sync()
        return self._inner.close()
