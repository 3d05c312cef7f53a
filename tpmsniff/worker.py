"""Run decoding and sinks in a child process, so the relay never waits on them.

The relay process keeps only framing and forwarding. Everything the pipeline needs is
shipped as length-prefixed pickles over a non-blocking pipe; the child runs the ordinary
`Pipeline` synchronously on the other core.

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
import pickle
import signal
from collections import deque
from collections.abc import Callable

import structlog

from .channels import Event
from .pipeline import Pipeline
from .sinks.base import ConnInfo

log = structlog.get_logger("tpmsniff.worker")

HIGH_WATER = 2 << 20
LOW_WATER = 512 << 10
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class WorkerPipeline:
    """The relay-side stand-in for `Pipeline`: same calls, work done in a child process."""

    def __init__(self, make_pipeline: Callable[[], Pipeline]) -> None:
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
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._writer = False
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []

    # -- Pipeline interface ----------------------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        self._send(("open", info))

    def events(self, conn: int, ts: float, events: list[Event]) -> None:
        if events:
            self._send(("events", conn, ts, events))

    def conn_close(self, conn: int, ts: float, events: list[Event] | None = None) -> None:
        if events:
            self._send(("events", conn, ts, events))
        self._send(("close", conn, ts))

    def control(self, what: str) -> None:
        """Out-of-band request to the child (e.g. "reopen" on SIGHUP)."""
        self._send(("control", what))

    # -- transport to the child ---------------------------------------------------
    def _send(self, item: tuple) -> None:
        if self._fd < 0:
            return
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        rec = len(data).to_bytes(4, "little") + data
        if self._pending:
            self._queue(rec)
            return
        try:
            n = os.write(self._fd, rec)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            self._child_gone()
            return
        if n < len(rec):
            self._queue(rec[n:])

    def _queue(self, rest: bytes) -> None:
        self._pending.append(rest)
        self._pending_bytes += len(rest)
        if not self.congested and self._pending_bytes > HIGH_WATER:
            self._set_congested(True)
        if not self._writer:
            self._writer = True
            asyncio.get_running_loop().add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        while self._pending:
            chunk = self._pending[0]
            try:
                n = os.write(self._fd, chunk)
            except BlockingIOError:
                return
            except BrokenPipeError:
                self._child_gone()
                return
            self._pending_bytes -= n
            if self.congested and self._pending_bytes < LOW_WATER:
                self._set_congested(False)
            if n < len(chunk):
                self._pending[0] = chunk[n:]
                return
            self._pending.popleft()
        self._stop_writer()

    def _set_congested(self, flag: bool) -> None:
        self.congested = flag
        log.debug("capture worker backpressure", on=flag, backlog=self._pending_bytes)
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
        self._pending.clear()
        self._pending_bytes = 0
        if self.congested:
            self._set_congested(False)
        os.close(self._fd)
        self._fd = -1

    def close(self, timeout: float = 10.0) -> int:
        """Flush what is queued (blocking), close the pipe and reap the child."""
        self._stop_writer()
        if self._fd >= 0:
            os.set_blocking(self._fd, True)
            try:
                while self._pending:
                    os.write(self._fd, self._pending.popleft())
            except OSError:
                pass
            os.close(self._fd)
            self._fd = -1
        return _reap(self.pid, timeout)


def _reap(pid: int, timeout: float) -> int:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child(fd: int, make_pipeline: Callable[[], Pipeline]) -> int:
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
            item = pickle.loads(buf[off + 4 : off + 4 + n])
            off += 4 + n
            _dispatch(pipeline, item)
        del buf[:off]
    pipeline.close()
    log.debug("capture worker done", frames=pipeline.frames_seen)
    return pipeline.exit_code()


def _dispatch(p: Pipeline, item: tuple) -> None:
    kind = item[0]
    if kind == "events":
        p.events(item[1], item[2], item[3])
    elif kind == "open":
        p.conn_open(item[1])
    elif kind == "close":
        p.conn_close(item[1], item[2])
    elif kind == "control":
        p.control(item[1])
