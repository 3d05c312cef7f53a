"""Run decoding and sinks in a child process, so the relay never waits on them.

The relay process keeps only framing and forwarding. Everything the pipeline needs is
shipped as length-prefixed records (pipeline/records.py) over a non-blocking pipe, in
batches; the child runs an ordinary `InProcessPipeline` synchronously on the other core.

If the child falls behind (a flood of commands outrunning decoding), records queue in the
relay process; above `HIGH_WATER` bytes the relay stops reading its clients until the
queue is below `LOW_WATER` again. Memory stays bounded and no frame is lost; interactive
TPM traffic never gets near the mark. A sink that fails (disk full) stops writing rather
than slowing down, so it does not trigger this.

At stop the relay closes the pipe after the last record and waits, without a time limit,
for the child to have written every record. Only a second SIGTERM/SIGINT (or systemd's
stop timeout, docs/deploy.md) cuts that short: the child is told to stop after the
record in hand (SIGUSR1), and one log line says how many messages were not written
(exit 4). The child counts what it has written in a page shared with the relay, so the
relay knows that count even when the child was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import select
import signal
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from ..model import ConnInfo, Event
from ..model.exits import EXIT_CAPTURE_LOST, EXIT_STARTUP, combine
from ..safefile import describe
from .records import Closed, Control, Opened, Record, Relayed, decode, encode

if TYPE_CHECKING:  # the decoder is imported by the child, after the fork
    from .inprocess import InProcessPipeline

log = structlog.get_logger("tpmsniff.worker")

# s: records reach the worker within this, in batches. uvloop's timers have 1 ms
# resolution (0.5 ms rounds to 0: a wake-up of the worker per event); a batch is also
# written at once when it reaches FLUSH_BYTES.
FLUSH_DELAY = 0.002
FLUSH_BYTES = 64 << 10
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


READY_TIMEOUT = 60.0  # s: the worker opens its outputs and writes their headers
CUT_GRACE = 2.0  # s: after SIGUSR1 (cut), the child ends the record in hand, then SIGKILL
_status_fd = -1  # in the worker: where it says its outputs are open (or why not)
_cut = False  # in the worker: SIGUSR1 came, stop after the record in hand
_COUNT = struct.Struct("<Q")  # the shared page: messages the child has written


class Cut(BaseException):
    """A second SIGTERM/SIGINT while the relay waits for the worker to finish."""


def _raise_cut(signum: int, frame: object) -> None:
    """The second stop request: raised once; any further signal is ignored (a Cut raised
    inside the handling of the first would escape it)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Cut()


class WorkerStartError(Exception):
    """The worker could not open or start writing its outputs: one line, exit 3."""


class WorkerPipeline:
    """A `FramePipeline` whose decoding and sinks run in a child process.

    The constructor returns at once, so the relay listens while the child imports the
    decoder; `started()` returns once the child has opened every output and written its
    headers, or raises WorkerStartError with the child's one-line reason."""

    def __init__(self, make_pipeline: Callable[[], InProcessPipeline]) -> None:
        r, w = os.pipe()
        status_r, status_w = os.pipe()
        self._written = mmap.mmap(-1, _COUNT.size)  # shared with the child after the fork
        pid = os.fork()
        if pid == 0:  # child
            global _status_fd
            os.close(w)
            os.close(status_r)
            _status_fd = status_w
            code = EXIT_CAPTURE_LOST
            try:
                code = _child(r, make_pipeline, status_w, self._written)
            except BaseException as exc:  # say why, then leave without running parent code
                log.error("capture worker failed", error=repr(exc))
            finally:
                os._exit(code)
        os.close(r)
        os.close(status_w)
        self.pid = pid
        self._exit: int | None = None
        self._status_fd = status_r
        self._pidfd = -1  # readable once the worker has exited (watched after its start)
        self._pidfd_loop: asyncio.AbstractEventLoop | None = None
        self._start_failed = False
        with contextlib.suppress(OSError):  # the default 64 KiB still works
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(w, False)
        self._fd = w
        self._out = bytearray()  # records not yet written to the pipe
        self._flush_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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

    async def started(self) -> None:
        """Wait until the worker has opened its outputs (the capture files exist with
        their headers). The relay does not wait for this: it accepts and relays from the
        start; the daemon says READY=1 after it. Raises WorkerStartError (one line) if
        the worker could not open or start an output."""
        fd = self._status_fd
        if fd < 0:
            return
        self._status_fd = -1
        loop = asyncio.get_running_loop()
        msg = b""
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            nonlocal msg
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            msg += chunk
            if (not chunk or msg.endswith(b"\n")) and not done.done():
                done.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(done, READY_TIMEOUT)
        except TimeoutError:
            msg = b"capture worker did not start within %d s\n" % READY_TIMEOUT
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        if msg == b"ok\n":
            self._watch_exit(loop)
            return
        why = msg.decode("utf-8", "replace").strip() or "capture worker exited at start"
        self._start_failed = True  # said once, by the daemon: close() need not add a line
        raise WorkerStartError(why)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Notice the worker's death when it happens (a pidfd), not at the next pipe write,
        which may never come if it died between two bursts of records."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            return  # the next write notices (EPIPE)

        def exited() -> None:
            loop.remove_reader(pidfd)
            self._close_pidfd()
            if self._fd >= 0:
                self._child_gone()

        self._pidfd, self._pidfd_loop = pidfd, loop
        loop.add_reader(pidfd, exited)

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def encoded(self, data: bytes, frames: int) -> None:
        """Whole records already encoded with their length prefixes (the native relay's
        batches), holding `frames` messages."""
        if self._fd < 0:
            return
        self._frames += frames
        self._out += data
        if not self._writer:  # already a batch: no need to wait for more
            self._flush()
        if not self.congested and len(self._out) > HIGH_WATER:
            self._set_congested(True)

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
        if self._writer:
            return  # the pipe is full: _flush runs when the child has read
        if len(self._out) >= FLUSH_BYTES:
            self._flush()
        elif self._flush_timer is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._flush_timer = self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
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

    @property
    def written(self) -> int:
        """Messages the worker has written so far (read from the page it shares)."""
        return int(_COUNT.unpack_from(self._written)[0])

    def close(self, cut: bool = False) -> int:
        """Flush what is queued, close the pipe and wait until the worker has written
        every record (however long that takes); returns `exit_code`. `cut` (a second stop
        request came already), or a SIGTERM/SIGINT meanwhile, stops it early: one log
        line says how many messages were not written, and the exit code is 4."""
        self._stop_writer()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._status_fd >= 0:
            os.close(self._status_fd)
            self._status_fd = -1
        if self._pidfd >= 0 and self._pidfd_loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._pidfd_loop.remove_reader(self._pidfd)
        self._close_pidfd()
        if self._exit is not None:
            return self.exit_code
        previous = _catch_stop_signals()
        try:
            if cut:
                raise Cut()
            self._finish()
        except Cut:
            self._cut_short()
        finally:
            _restore_signals(previous)
        return self.exit_code

    def _finish(self) -> None:
        """Every queued record into the pipe, then the child's exit (a blocking wait: a
        signal raises Cut out of it)."""
        if self._fd >= 0:
            os.set_blocking(self._fd, True)
            with contextlib.suppress(BrokenPipeError):
                while self._out:
                    del self._out[: os.write(self._fd, self._out)]
            self._close_pipe()
        _, status = os.waitpid(self.pid, 0)
        self._reaped(os.waitstatus_to_exitcode(status))

    def _cut_short(self) -> None:
        """Tell the child to stop after the record in hand; kill it if it does not."""
        with contextlib.suppress(ValueError):  # further signals: no second cut
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)  # (cut=True came without a signal)
        self._close_pipe()
        self._out.clear()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)
        code = _wait_exit(self.pid, CUT_GRACE)
        self._reaped(code, cut=True)
        lost = max(0, self._frames - self.written)
        if lost or code not in (0, 1):  # (it may have just finished: then nothing is lost)
            self._lost = True
            log.error("stop cut short: messages not written to the outputs", not_written=lost)

    def _reaped(self, code: int, cut: bool = False) -> None:
        self._exit = code
        if code not in (0, 1, EXIT_CAPTURE_LOST) and not self._start_failed and not cut:
            log.error("capture worker ended abnormally", status=code)

    def _close_pipe(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _catch_stop_signals() -> dict[int, object]:
    """While the relay waits for the worker: SIGTERM/SIGINT raise Cut (main thread only;
    elsewhere nothing changes)."""
    previous: dict[int, object] = {}
    with contextlib.suppress(ValueError):  # not the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _raise_cut)
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _wait_exit(pid: int, grace: float) -> int:
    """The child's exit code; SIGKILL if it has not exited within `grace` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    try:
        if pidfd >= 0:
            select.select([pidfd], [], [], grace)
        done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped just before the cut: its shared count is final
        return 0
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return os.waitstatus_to_exitcode(status)


def _pin_worker() -> None:
    """Keep the worker off the relay's core: with more than one CPU, the worker runs on
    the last allowed one. Decoding costs more CPU per round trip than relaying; sharing
    a core with the relay, swtpm and the client is what made the relay's millisecond
    tail (measured: p99 530 µs unpinned, 80 µs pinned). The relay stays unpinned: the
    scheduler moves it off the busy core."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(0, cpus[-1:])
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run unpinned
        log.debug("cpu affinity not set", error=str(exc))


def announce_started() -> None:
    """Called by the worker once its outputs are open (before it imports the decoder);
    a no-op anywhere else, and after the first call."""
    global _status_fd
    if _status_fd >= 0:
        with contextlib.suppress(OSError):
            os.write(_status_fd, b"ok\n")
        os.close(_status_fd)
        _status_fd = -1


def _on_cut(signum: int, frame: object) -> None:
    global _cut
    _cut = True


def _child(
    fd: int, make_pipeline: Callable[[], InProcessPipeline], status: int, written: mmap.mmap
) -> int:
    global _status_fd
    # The parent decides when we stop: by closing the pipe after the last record, or by
    # SIGUSR1 (a stop cut short), after which the record in hand is the last.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, _on_cut)
    _pin_worker()
    try:
        pipeline = make_pipeline()  # calls announce_started() once its outputs are open
    except (OSError, ValueError) as exc:  # an output that cannot be opened or started
        if _status_fd >= 0:
            os.write(status, (start_error_text(exc) + "\n").encode())
            os.close(status)
            _status_fd = -1
        else:
            log.error("capture worker failed", error=start_error_text(exc))
        return EXIT_STARTUP
    announce_started()
    done, complete = _drain(fd, pipeline, written)
    pipeline.close()
    log.debug("capture worker done", frames=done, complete=complete)
    return pipeline.exit_code if complete else combine(EXIT_CAPTURE_LOST, pipeline.exit_code)


def _drain(fd: int, pipeline: InProcessPipeline, written: mmap.mmap) -> tuple[int, bool]:
    """Every record from the pipe into the pipeline until EOF (or a cut); the count of
    messages written so far goes to the shared page after each flush. Returns that count
    and whether every record was read (False: a cut stopped it early)."""
    buf = bytearray()
    # read into one reused buffer: os.read(fd, 1 MiB) allocates (and maps) 1 MiB a call,
    # whatever arrived, and most reads bring one small batch
    space = bytearray(1 << 20)
    view = memoryview(space)
    done = pushed = 0
    while not _cut:
        try:
            got = os.readv(fd, [space])
        except InterruptedError:
            continue
        if not got:
            return done, not buf  # EOF: a partial record left means the pipe was cut
        buf += view[:got]
        off = 0
        while len(buf) - off >= 4 and not _cut:
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
            if isinstance(rec, Relayed):
                pushed += 1
        del buf[:off]
        pipeline.flush()  # one write per output for what this read brought
        if pushed != done:  # written means flushed: a kill after this loses nothing counted
            done = pushed
            _COUNT.pack_into(written, 0, done)
    pipeline.flush()  # a cut: what was pushed before it is written too
    _COUNT.pack_into(written, 0, pushed)
    return pushed, False


def start_error_text(exc: BaseException) -> str:
    """One line for an output that cannot be opened or started."""
    if isinstance(exc, OSError):
        return "capture " + describe(str(exc.filename or "?"), exc)
    return str(exc)
