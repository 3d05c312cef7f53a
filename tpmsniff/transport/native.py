"""The native data-channel relay (`--relay native`): Python accepts, detects the role and
connects upstream, then hands both sockets of a TPM data connection to a C epoll thread
(tpmsniff/_native/relay.c) that relays them by the same rules as `DataChannel` and sends
back records, already encoded for the capture worker, in batches through a pipe.

Control channels, QEMU's control channel (fd passing) and the data channel QEMU hands
over stay in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import time
from typing import Any, Protocol

import structlog

from .._native import NativeUnavailable, load
from ..model import Channel, ConnInfo, Direction, EventSink, Framing
from .addresses import Address
from .endpoints import connect_upstream
from .errors import StartupError
from .limits import guarded

log = structlog.get_logger("tpmsniff.relay")

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class EncodedSink(EventSink, Protocol):
    def encoded(self, data: bytes, frames: int) -> None:
        """Whole records, encoded as pipeline/records.py does, with length prefixes."""
        ...


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
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
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
        self._h = self._lib.tn_new(w, codes)
        if self._h == self._ffi.NULL:
            os.close(r)
            os.close(w)
            raise StartupError("native relay: could not start its thread")
        self._r, self._w = r, w
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(r, self._drain)
        pipeline.pressure_listeners.append(self._pressure)
        if pipeline.congested:
            self._pressure(True)

    @property
    def active(self) -> int:
        """Connections the C thread still relays."""
        return int(self._lib.tn_active(self._h)) if self._h is not None else 0

    def _pressure(self, congested: bool) -> None:
        if self._h is not None:
            self._lib.tn_pause(self._h, int(congested))

    async def hand_over(
        self, sock: socket.socket, early: bytes, conn: int, peer: str, upstream: Address
    ) -> None:
        """Connect upstream for the client `sock` (whose first bytes are `early`) and let
        the C thread relay the pair."""
        try:
            up = await connect_upstream(upstream)
        except OSError as exc:
            log.warning(
                "upstream connect failed; closing client",
                conn=conn,
                upstream=str(upstream),
                error=exc.strerror or str(exc),
            )
            sock.close()
            return
        for s in (sock, up):
            if s.family != socket.AF_UNIX:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("connection opened", conn=conn, channel="tpm", peer=peer, upstream=str(upstream))
        self.sync()
        self.pipeline.conn_open(ConnInfo(conn, Channel.TPM, peer, str(upstream), time.time()))
        if self._h is None:  # closed meanwhile
            sock.close()
            up.close()
            self.pipeline.conn_close(conn, time.time())
            return
        cfd, ufd = sock.detach(), up.detach()
        if self._lib.tn_add(self._h, cfd, ufd, conn, self.max_message, early, len(early)) < 0:
            os.close(cfd)
            os.close(ufd)
            self.pipeline.conn_close(conn, time.time())

    def sync(self) -> None:
        """Take every record the C thread has made so far (before Python writes one of its
        own: the capture stays in the order things crossed the relay)."""
        if self._h is None:
            return
        self._lib.tn_lock_out(self._h)
        try:
            self._read_pipe()
            self._take_buffer()
        finally:
            self._lib.tn_unlock_out(self._h)
        self._deliver()

    def _take_buffer(self) -> None:
        n = int(self._lib.tn_pending_out(self._h))
        if n:
            out = self._ffi.new("uint8_t[]", n)
            got = self._lib.tn_take_out(self._h, out, n)
            self._buf += self._ffi.buffer(out, got)[:]

    def _read_pipe(self) -> None:
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._buf += chunk

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._buf += chunk
            if len(chunk) < 1 << 20:
                break
        self._deliver()

    def _deliver(self) -> None:
        """Hand whole batches to the pipeline (a read may end inside one). A batch is
        `u32 length | u32 messages | u32 closes | u64 closed ids | records`, all
        little-endian; length counts the ids and the records."""
        buf = self._buf
        while len(buf) >= 12:
            size = int.from_bytes(buf[0:4], "little")
            if len(buf) < 12 + size:
                break
            frames = int.from_bytes(buf[4:8], "little")
            closes = int.from_bytes(buf[8:12], "little")
            for i in range(closes):
                conn = int.from_bytes(buf[12 + 8 * i : 20 + 8 * i], "little")
                log.info("connection closed", conn=conn)
            batch = bytes(buf[12 + 8 * closes : 12 + size])
            del buf[: 12 + size]  # before the hand-over: a failing pipeline never sees it twice
            self._hand_over(batch, frames)

    def _hand_over(self, batch: bytes, frames: int) -> None:
        guarded(lambda: self.pipeline.encoded(batch, frames))

    def close_all(self) -> None:
        """Close every connection at once (shutdown: what is queued is dropped)."""
        if self._h is not None:
            self._lib.tn_close_all(self._h)

    def close(self) -> None:
        """Stop the thread and hand every record it made to the pipeline."""
        if self._h is None:
            return
        self._lib.tn_stop(self._h)
        self._loop.remove_reader(self._r)
        self._read_pipe()
        self._take_buffer()
        self._deliver()
        self._lib.tn_free(self._h)
        self._h = None
        os.close(self._r)
        os.close(self._w)


class Ordered:
    """The pipeline as the Python side of the relay sees it when a native relay runs:
    each record Python writes (control channels, QEMU, opens, SIGHUP's reopen) first
    takes the native relay's records made before it."""

    def __init__(self, inner: Any, native: NativeRelay) -> None:
        self._inner = inner
        self._native = native

    @property
    def congested(self) -> bool:
        return bool(self._inner.congested)

    @property
    def pressure_listeners(self) -> list[Any]:
        return self._inner.pressure_listeners  # type: ignore[no-any-return]

    def conn_open(self, info: ConnInfo) -> None:
        self._native.sync()
        self._inner.conn_open(info)

    def events(self, conn: int, ts: float, events: Any, number: int | None = None) -> None:
        self._native.sync()
        self._inner.events(conn, ts, events, number)

    def conn_close(self, conn: int, ts: float) -> None:
        self._native.sync()
        self._inner.conn_close(conn, ts)

    def control(self, what: str) -> None:
        self._native.sync()
        self._inner.control(what)

    def __getattr__(self, name: str) -> Any:  # started(), close(), exit_code...
        return getattr(self._inner, name)
