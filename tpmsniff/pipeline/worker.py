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
from .inprocess import InProcessPipeline
from .records import Closed, Control, Opened, Record, Relayed, decode, encode

log = structlog.get_logger("tpmsniff.worker")

FLUSH_DELAY = 0.0005  # s: records reach the worker within this, in batches
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class WorkerPipeline:
    """A `FramePipeline` whose decoding and sinks run in a child process."""

    def __init__(self, make_pipeline: Callable[[], InProcessPipeline]) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(w)
            code = 1
            try:
                code = _child(r, make_pipeline)
            except BaseException as exc:  # say why, then leave without running parent code
                log.error("capture worker failed", error=repr(exc))
            finally:
                os._exit(code)
        os.close(r)
        with contextlib.suppress(OSError):  # the default 64 KiB still works
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(w, False)
        self.pid = pid
        self._fd = w
        self._out = bytearray()  # records not yet written to the pipe
        self._flush_timer = False
        self._writer = False
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []
        self._frames = 0
        self._exit: int | None = None

    # -- FramePipeline ----------------------------------------------------------
    @property
    def frames_seen(self) -> int:
        """Messages shipped to the worker (it annotates them)."""
        return self._frames

    @property
    def exit_code(self) -> int:
        """The worker's exit status once closed (its sinks' verdict); 0 before."""
        return self._exit or 0

    def conn_open(self, info: ConnInfo) -> None:
        self._write_record(encode(Opened(info)))

    def events(
        self, conn: int, ts: float, events: Sequence[Event], number: int | None = None
    ) -> None:
        for ev in events:
            self._frames += 1
            self._write_record(encode(Relayed(conn, ts, ev, number)))

    def conn_close(self, conn: int, ts: float) -> None:
        self._write_record(encode(Closed(conn, ts)))

    def control(self, what: str) -> None:
        """Out-of-band request to the child (e.g. "reopen" on SIGHUP)."""
        self._write_record(encode(Control(what)))

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
        self._stop_writer()
        self._out.clear()
        if self.congested:
            self._set_congested(False)
        os.close(self._fd)
        self._fd = -1

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (blocking), close the pipe and reap the child; returns its
        exit status."""
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
        return self._exit


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


def _child(fd: int, make_pipeline: Callable[[], InProcessPipeline]) -> int:
    # The parent decides when we stop: by closing the pipe after the last record.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pipeline = make_pipeline()
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
            rec: Record = decode(body)
            body.release()
            pipeline.push(rec)
        del buf[:off]
    pipeline.close()
    log.debug("capture worker done", frames=pipeline.frames_seen)
    return pipeline.exit_code
