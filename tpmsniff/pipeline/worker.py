"""Run decoding and sinks in a child process, so the relay never waits on them.

The relay process keeps only framing and forwarding. Everything the pipeline needs is
shipped as length-prefixed records (pipeline/records.py) over a non-blocking pipe, in
batches; the child runs an ordinary `InProcessPipeline` synchronously on the other core.

If the child falls behind (a flood of commands outrunning decoding), records queue in the
relay process; above `HIGH_WATER` bytes the relay stops reading its clients until the
queue is below `LOW_WATER` again. Memory stays bounded and no frame is lost; interactive
TPM traffic never gets near the mark. A sink that fails (disk full) stops writing rather
than slowing down, so it does not trigger this.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Sequence

import structlog

from ..model import ConnInfo, Event
from ..model.exits import EXIT_CAPTURE_LOST, EXIT_STARTUP, combine
from ..safefile import describe
from .inprocess import InProcessPipeline
from .records import Closed, Control, Opened, Record, Relayed, decode, encode

log = structlog.get_logger("tpmsniff.worker")

FLUSH_DELAY = 0.0005  # s: records reach the worker within this, in batches
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


READY_TIMEOUT = 60.0  # s: the worker opens its outputs and writes their headers


class WorkerStartError(Exception):
    """The worker could not open or start writing its outputs: one line, exit 3."""


class WorkerPipeline:
    """A `FramePipeline` whose decoding and sinks run in a child process.

    The constructor returns once the child has opened every output and written its
    headers, or raises WorkerStartError with the child's one-line reason."""

    def __init__(self, make_pipeline: Callable[[], InProcessPipeline]) -> None:
        r, w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(w)
            os.close(status_r)
            code = EXIT_CAPTURE_LOST
            try:
                code = _child(r, make_pipeline, status_w)
            except BaseException as exc:  # say why, then leave without running parent code
                log.error("capture worker failed", error=repr(exc))
            finally:
                os._exit(code)
        os.close(r)
        os.close(status_w)
        self.pid = pid
        self._exit: int | None = None
        try:
            _wait_ready(status_r)
        except WorkerStartError:
            os.close(w)
            self._exit = _reap(pid, 5.0)
            raise
        with contextlib.suppress(OSError):  # the default 64 KiB still works
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(w, False)
        self._fd = w
        self._out = bytearray()  # records not yet written to the pipe
        self._flush_timer = False
        self._writer = False
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []
        self._frames = 0
        self._lost = False  # the worker went away while the relay ran
        self._encode_errors = 0

    # -- FramePipeline ----------------------------------------------------------
    @property
    def frames_seen(self) -> int:
        """Messages shipped to the worker (it annotates them)."""
        return self._frames

    @property
    def exit_code(self) -> int:
        """Once closed: the worker's verdict (0, 1 violation, 4 outputs lost); a worker
        that died or was killed, or a record that could not be shipped, is 4. 0 before."""
        if self._exit is None:
            return 0
        lost = EXIT_CAPTURE_LOST if self._lost or self._encode_errors else 0
        return combine(lost, self._exit)

    def conn_open(self, info: ConnInfo) -> None:
        self._ship(Opened(info))

    def events(
        self, conn: int, ts: float, events: Sequence[Event], number: int | None = None
    ) -> None:
        for ev in events:
            self._frames += 1
            self._ship(Relayed(conn, ts, ev, number))

    def conn_close(self, conn: int, ts: float) -> None:
        self._ship(Closed(conn, ts))

    def control(self, what: str) -> None:
        """Out-of-band request to the child (e.g. "reopen" on SIGHUP)."""
        self._ship(Control(what))

    def _ship(self, rec: Record) -> None:
        """Encode and queue one record; a record that cannot be encoded is logged (once)
        and counted, never raised into the relay."""
        try:
            data = encode(rec)
        except Exception as exc:
            if not self._encode_errors:
                log.error("capture record dropped", record=type(rec).__name__, error=repr(exc))
            self._encode_errors += 1
            return
        self._write_record(data)

    # -- transport to the child ---------------------------------------------------
    def _write_record(self, data: bytes) -> None:
        """Queue a record; the pipe is written at most FLUSH_DELAY later, in batches, so
        the write is not between a forwarded response and reading the next command."""
        if self._fd < 0:
            return
        self._out += len(data).to_bytes(4, "little")
        self._out += data
        if not self.congested and len(self._out) > HIGH_WATER:
            self._set_congested(True)
        if not self._flush_timer and not self._writer:
            self._flush_timer = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_timer = False
        while self._out and self._fd >= 0:
            try:
                n = os.write(self._fd, self._out)
            except BlockingIOError:
                if not self._writer:  # pipe full: continue when the child has read
                    self._writer = True
                    asyncio.get_running_loop().add_writer(self._fd, self._flush)
                return
            except BrokenPipeError:
                self._child_gone()
                return
            del self._out[:n]
            if self.congested and len(self._out) < LOW_WATER:
                self._set_congested(False)
        self._out = bytearray()  # drop the capacity a burst left behind
        self._stop_writer()

    def _set_congested(self, flag: bool) -> None:
        self.congested = flag
        log.debug("capture worker backpressure", on=flag, backlog=len(self._out))
        for cb in self.pressure_listeners:
            cb(flag)

    def _stop_writer(self) -> None:
        if self._writer:
            self._writer = False
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_writer(self._fd)

    def _child_gone(self) -> None:
        log.error("capture worker exited; relay continues without capture")
        self._lost = True
        self._stop_writer()
        self._out.clear()
        if self.congested:
            self._set_congested(False)
        os.close(self._fd)
        self._fd = -1

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (blocking), close the pipe and reap the child; returns
        `exit_code`."""
        self._stop_writer()
        if self._fd >= 0:
            os.set_blocking(self._fd, True)
            with contextlib.suppress(OSError):
                while self._out:
                    del self._out[: os.write(self._fd, self._out)]
            os.close(self._fd)
            self._fd = -1
        if self._exit is None:
            self._exit = _reap(self.pid, timeout)
            if self._exit not in (0, 1, EXIT_CAPTURE_LOST):
                log.error("capture worker ended abnormally", status=self._exit)
        return self.exit_code


def _reap(pid: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _wait_ready(fd: int) -> None:
    """Block until the child says its outputs are open ("" ) or why not."""
    import select

    msg = b""
    end = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            msg += chunk
            if msg.endswith(b"\n"):
                break
    finally:
        os.close(fd)
    if msg == b"ok\n":
        return
    why = msg.decode("utf-8", "replace").strip() or "capture worker exited at start"
    raise WorkerStartError(why)


def _child(fd: int, make_pipeline: Callable[[], InProcessPipeline], status: int) -> int:
    # The parent decides when we stop: by closing the pipe after the last record.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        pipeline = make_pipeline()
    except (OSError, ValueError) as exc:  # an output that cannot be opened or started
        os.write(status, (start_error_text(exc) + "\n").encode())
        os.close(status)
        return EXIT_STARTUP
    os.write(status, b"ok\n")
    os.close(status)
    buf = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except InterruptedError:
            continue
        if not chunk:
            break
        buf += chunk
        off = 0
        while len(buf) - off >= 4:
            n = int.from_bytes(buf[off : off + 4], "little")
            if len(buf) - off - 4 < n:
                break
            body = memoryview(buf)[off + 4 : off + 4 + n]
            off += 4 + n
            try:
                rec: Record = decode(body)
            except ValueError as exc:
                log.error("capture record unreadable; skipped", error=str(exc))
                continue
            finally:
                body.release()
            pipeline.push(rec)
        del buf[:off]
    pipeline.close()
    log.debug("capture worker done", frames=pipeline.frames_seen)
    return pipeline.exit_code


def start_error_text(exc: BaseException) -> str:
    """One line for an output that cannot be opened or started."""
    if isinstance(exc, OSError):
        return "capture " + describe(str(exc.filename or "?"), exc)
    return str(exc)
