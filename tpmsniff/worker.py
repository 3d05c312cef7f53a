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
import struct
from collections.abc import Callable

import structlog

from .channels import Event
from .framing import Message
from .model import Channel, Direction, Framing
from .pipeline import Pipeline
from .sinks.base import ConnInfo

log = structlog.get_logger("tpmsniff.worker")

# Event records are the hot path (two per TPM round trip): a fixed struct, not a pickle
# (16 µs per pickled event measured, ~1 µs packed). Other records are rare and pickled.
_EVENT = struct.Struct(
    "<cIdBBBBBiIH"
)  # tag conn ts channel dir framing prefix loc cmd rawlen notelen
_CHANNELS = list(Channel)
_DIRECTIONS = list(Direction)
_FRAMINGS = list(Framing)
_CH = {c: i for i, c in enumerate(_CHANNELS)}
_DIR = {d: i for i, d in enumerate(_DIRECTIONS)}
_FR = {f: i for i, f in enumerate(_FRAMINGS)}


def encode_event(conn: int, ts: float, ev: Event) -> bytes:
    m = ev.message
    note = (m.note or "").encode()
    head = _EVENT.pack(
        b"E",
        conn,
        ts,
        _CH[ev.channel],
        _DIR[ev.direction],
        _FR[m.framing],
        m.prefix,
        255 if m.locality is None else m.locality,
        -1 if ev.ctrl_cmd is None else ev.ctrl_cmd,
        len(m.raw),
        len(note),
    )
    return head + note + m.raw


def decode_event(buf: bytes | memoryview) -> tuple[int, float, Event]:
    _, conn, ts, ch, d, fr, prefix, loc, cmd, rawlen, notelen = _EVENT.unpack_from(buf)
    off = _EVENT.size
    note = bytes(buf[off : off + notelen]).decode() or None
    raw = bytes(buf[off + notelen : off + notelen + rawlen])
    msg = Message(raw, _FRAMINGS[fr], prefix, None if loc == 255 else loc, note)
    return conn, ts, Event(_CHANNELS[ch], _DIRECTIONS[d], msg, None if cmd < 0 else cmd)


FLUSH_DELAY = 0.0005  # s: records reach the worker within this, in batches
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
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
        self._out = bytearray()  # records not yet written to the pipe
        self._flush_timer = False
        self._writer = False
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []

    # -- Pipeline interface ----------------------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        self._send(("open", info))

    def events(self, conn: int, ts: float, events: list[Event]) -> None:
        for ev in events:
            self._write_record(encode_event(conn, ts, ev))

    def conn_close(self, conn: int, ts: float, events: list[Event] | None = None) -> None:
        if events:
            self.events(conn, ts, events)
        self._send(("close", conn, ts))

    def control(self, what: str) -> None:
        """Out-of-band request to the child (e.g. "reopen" on SIGHUP)."""
        self._send(("control", what))

    # -- transport to the child ---------------------------------------------------
    def _send(self, item: tuple) -> None:
        self._write_record(b"P" + pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))

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
        """Flush what is queued (blocking), close the pipe and reap the child."""
        self._stop_writer()
        if self._fd >= 0:
            os.set_blocking(self._fd, True)
            with contextlib.suppress(OSError):
                while self._out:
                    del self._out[: os.write(self._fd, self._out)]
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
            body = memoryview(buf)[off + 4 : off + 4 + n]
            off += 4 + n
            if body[:1] == b"E":
                conn, ts, ev = decode_event(body)
                pipeline.events(conn, ts, [ev])
            else:
                _dispatch(pipeline, pickle.loads(body[1:]))
            body.release()
        del buf[:off]
    pipeline.close()
    log.debug("capture worker done", frames=pipeline.frames_seen)
    return pipeline.exit_code()


def _dispatch(p: Pipeline, item: tuple) -> None:
    kind = item[0]
    if kind == "open":
        p.conn_open(item[1])
    elif kind == "close":
        p.conn_close(item[1], item[2])
    elif kind == "control":
        p.control(item[1])
