"""`--pcap-tee PATH`: a 0600 Unix socket where any number of live readers (Wireshark's
extcap, `socat`, a script) connect and each get a complete pcapng stream: the section and
interface header first, then every annotated packet from then on.

A reader never slows the relay or the worker: each has a bounded buffer
(`--pcap-tee-buffer`), sending is non-blocking, and when a reader's buffer is full the
blocks are dropped for it whole (the stream stays valid pcapng), counted, and logged once
per reader (the count again when it leaves).

The blocks come from the pcapng sink itself (its public constructor, writing to a private
named pipe whose other end this sink reads), so the tee shows exactly what `--pcap`
writes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field

import structlog

from ..model import ConnInfo, Frame
from .base import BaseSink, OptionError, SinkContext

log = structlog.get_logger("tpmsniff.tee")

DEFAULT_BUFFER = 4 << 20  # per reader
MAX_READERS = 16  # every resource a client can make us spend is bounded
CLOSE_GRACE = 0.5  # s: how long a stop waits for readers to take what is pending
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ on Linux; spelled out for mypy)
PIPE_SIZE = 1 << 20  # one message's blocks (a control state blob) must fit


def registry_dir() -> str:
    """Where daemons with --pcap-tee register, so `tpmsniff extcap` finds them:
    $TPMSNIFF_RUNTIME_DIR, else $XDG_RUNTIME_DIR/tpmsniff, else /run/tpmsniff as root,
    else /tmp/tpmsniff-UID."""
    if os.environ.get("TPMSNIFF_RUNTIME_DIR"):
        return os.environ["TPMSNIFF_RUNTIME_DIR"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "tpmsniff")
    return "/run/tpmsniff" if os.geteuid() == 0 else f"/tmp/tpmsniff-{os.geteuid()}"


def register(sock_path: str) -> str | None:
    """Write REGISTRY/tee-PID (0600, no symlink followed) naming our socket; its path, or
    None (logged) when the directory cannot be used: the tee works without it."""
    from ..safefile import open_private

    folder = registry_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{folder}: not a directory of ours")
        entry = os.path.join(folder, f"tee-{os.getpid()}")
        fd = open_private(entry)
        with os.fdopen(fd, "w") as fh:
            fh.write(os.path.abspath(sock_path) + "\n")
    except OSError as exc:
        log.warning("pcap-tee not registered for extcap", folder=folder, error=str(exc))
        return None
    return entry


def parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:].upper(), 1)
    digits = text[:-1] if mult != 1 else text
    if not digits.isdecimal() or int(digits) < 64 * 1024 // mult:
        raise OptionError(f"--pcap-tee-buffer {text!r}: expected N[K|M], at least 64K")
    return int(digits) * mult


def check_socket_path(path: str) -> None:
    """Refuse a path that exists and is not a socket (a file, a symlink): never replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OptionError(f"--pcap-tee {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a socket"
        raise OptionError(f"--pcap-tee {path}: {what}; refusing to replace it")
    if st.st_uid != os.geteuid():
        raise OptionError(f"--pcap-tee {path}: a socket of another user")


def listen_private(path: str) -> socket.socket:
    """A 0600 listening Unix socket at `path` (a stale socket of ours is replaced)."""
    check_socket_path(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # 0600 from the moment it exists
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(MAX_READERS)
    return s


@dataclass
class _Reader:
    sock: socket.socket
    n: int
    limit: int
    pending: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # blocks' batches dropped

    def offer(self, chunk: bytes) -> None:
        if len(self.pending) + len(chunk) > self.limit:
            if not self.dropped:
                log.warning("pcap-tee reader too slow; dropping packets for it", reader=self.n)
            self.dropped += 1
            return
        self.pending += chunk

    def flush(self) -> bool:
        """Send what the socket takes now; False once the reader is gone."""
        while self.pending:
            try:
                n = self.sock.send(self.pending, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del self.pending[:n]
        return True


class TeeSink(BaseSink):
    title = "live pcapng readers"

    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        if not live:
            return
        group.add_argument(
            "--pcap-tee",
            metavar="PATH",
            help="offer the annotated pcapng live on a 0600 Unix socket: every reader that "
            "connects gets the header, then every packet (Wireshark: `tpmsniff extcap`); a "
            "slow reader loses packets, never slows the relay",
        )
        group.add_argument(
            "--pcap-tee-buffer",
            metavar="N[K|M]",
            default="4M",
            help="per-reader buffer before its packets are dropped (default: 4M)",
        )

    @classmethod
    def check_options(cls, args: argparse.Namespace, live: bool) -> None:
        if live and args.pcap_tee:
            check_socket_path(args.pcap_tee)
            parse_size(args.pcap_tee_buffer)

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> TeeSink | None:
        if not ctx.live or not args.pcap_tee:
            return None
        return cls(args.pcap_tee, parse_size(args.pcap_tee_buffer))

    def __init__(self, path: str, limit: int = DEFAULT_BUFFER) -> None:
        from .pcapng import PcapngSink

        self.path = path
        self.limit = limit
        self._lock = threading.Lock()
        self._readers: list[_Reader] = []
        self._count = 0
        self._lsock = listen_private(path)
        tmp = tempfile.mkdtemp(prefix="tpmsniff-tee-")  # 0700: the pipe is only ours
        try:
            fifo = os.path.join(tmp, "blocks")
            os.mkfifo(fifo, 0o600)
            self._rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with contextlib.suppress(OSError):
                fcntl.fcntl(self._rfd, F_SETPIPE_SZ, PIPE_SIZE)
            self._encoder = PcapngSink(fifo)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._header = self._drain()  # SHB + IDB: what every reader gets first
        os.set_blocking(self._rfd, True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="pcap-tee", daemon=True)
        self._thread.start()
        # the pipe is drained all the time, so the encoder's writes (and the worker) never
        # wait on it, whatever one message's size
        self._pump = threading.Thread(target=self._pump_blocks, name="pcap-tee-pump", daemon=True)
        self._pump.start()
        self._entry = register(path)
        log.info("pcap-tee listening", path=path, registered=self._entry)

    # -- the encoder's output -> every reader ---------------------------------------
    def _drain(self) -> bytes:
        out = bytearray()
        while True:
            try:
                b = os.read(self._rfd, 1 << 16)
            except BlockingIOError:
                break
            if not b:
                break
            out += b
        return bytes(out)

    def _pump_blocks(self) -> None:
        """Read the encoder's output until it closes; hand on whole blocks only (a
        pcapng block's total length is its second 32-bit word), so a drop never cuts one."""
        buf = bytearray()
        while True:
            try:
                data = os.read(self._rfd, 1 << 16)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            end = 0
            while len(buf) - end >= 8:
                n = int.from_bytes(buf[end + 4 : end + 8], "little")
                if n < 12 or len(buf) - end < n:
                    break
                end += n
            if end:
                self._fan_out(bytes(buf[:end]))
                del buf[:end]

    def _fan_out(self, chunk: bytes) -> None:
        with self._lock:
            for r in self._readers:
                r.offer(chunk)
            self._flush_all()

    def _flush_all(self) -> None:
        for r in [r for r in self._readers if not r.flush()]:
            self._drop(r)

    def _send_tail(self, deadline: float) -> None:
        """At stop, what readers still have pending: a reader that keeps reading gets
        the whole stream; one that stalls costs the stop at most CLOSE_GRACE."""
        while True:
            self._flush_all()
            waiting = [r.sock for r in self._readers if r.pending]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([], waiting, [], left)

    def _drop(self, r: _Reader) -> None:
        self._readers.remove(r)
        r.sock.close()
        log.info("pcap-tee reader left", reader=r.n, dropped=r.dropped)

    def _serve(self) -> None:
        """Accept readers (header first); keep flushing those with data pending."""
        while not self._stop.is_set():
            with self._lock:
                waiting = [r.sock for r in self._readers if r.pending]
            try:
                rd, wr, _ = select.select([self._lsock], waiting, [], 0.2)
            except (OSError, ValueError):  # a reader dropped meanwhile: look again
                if self._stop.is_set() or self._lsock.fileno() < 0:
                    return
                continue
            if rd:
                self._accept()
            if wr:
                with self._lock:
                    self._flush_all()

    def _accept(self) -> None:
        try:
            sock, _ = self._lsock.accept()
        except OSError:
            return
        with self._lock:
            if len(self._readers) >= MAX_READERS:
                sock.close()
                log.warning("pcap-tee reader refused: too many readers", limit=MAX_READERS)
                return
            self._count += 1
            sock.setblocking(False)
            r = _Reader(sock, self._count, self.limit, bytearray(self._header))
            self._readers.append(r)
            log.info("pcap-tee reader connected", reader=r.n)
            if not r.flush():
                self._drop(r)

    # -- FrameConsumer ----------------------------------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        self._encoder.conn_open(info)

    def frame(self, f: Frame) -> None:
        self._encoder.frame(f)

    def conn_close(self, conn: int, ts: float) -> None:
        self._encoder.conn_close(conn, ts)

    def flush(self) -> None:
        """The encoder writes in batches: after each one the readers get it at once."""
        self._encoder.flush()

    def close(self) -> None:
        self._encoder.close()  # closes the pipe's write end: the pump reads to its end
        self._pump.join(5)
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            self._send_tail(time.monotonic() + CLOSE_GRACE)
            for r in list(self._readers):
                self._drop(r)
        self._lsock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._entry:
            with contextlib.suppress(OSError):
                os.unlink(self._entry)
        os.close(self._rfd)
