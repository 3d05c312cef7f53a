"""Annotated pcapng, laid out for Wireshark's TPM 2.0 dissector (the blocks and frames
are encoded in sinks/pcapfile.py, imported only when a capture is opened).

Layout (docs/pcapng.md): Ethernet/IPv4/TCP on 127.0.0.1; one synthetic TCP stream per
proxied connection with a handshake before its first message and FIN at close; the TPM
side on port 2321 (control channel: 2326, which the TPM dissector does not claim); the
client on a port above 50000; exactly one message per segment, each with an opt_comment
and epb_flags (outbound = towards the TPM, inbound = from it). Blocks are queued and
written whole, in one write per batch of records (`flush`, which the pipeline calls after
each batch, and at most 64 KiB apart): a live reader sees each batch at once, and a
killed daemon leaves a readable file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ..model import CTRL_PORT, TPM_PORT, Channel, ConnInfo, Direction, Frame, Framing, TpmInfo
from ..model.exits import EXIT_CAPTURE_LOST
from ..safefile import STDOUT, is_stream
from .base import BaseSink, OptionError, SinkContext, check_writable
from .text import one_line

log = structlog.get_logger("tpmsniff.pcapng")

CLIENT_PORT_BASE = 50000
CLIENT_PORTS = 15000  # 50000..64999, then the client address moves on
COMMENT_CACHE = 256  # comments of repeated decodes kept
MAX_SEGMENT = 65000  # IPv4 payload limit; only control state blobs get near it
INBOUND, OUTBOUND = 0b01, 0b10
# TCP header flags (RFC 9293 §3.1), as dpkt.tcp.TH_* (tests/unit/sinks/test_registry.py)
TH_FIN, TH_SYN, TH_PSH, TH_ACK = 0x01, 0x02, 0x08, 0x10

if TYPE_CHECKING:
    from .pcapfile import PcapngWriter


@dataclass(slots=True)
class _Stream:
    conn: int
    client_ip: bytes
    client_port: int
    server_port: int
    cseq: int  # next client sequence number
    sseq: int  # next server sequence number
    label: str
    started: bool = False


def stream_endpoint(conn: int) -> tuple[bytes, int]:
    """Client address and port of connection `conn` (unique for 15000 * 65000 connections)."""
    n = conn - 1
    port = CLIENT_PORT_BASE + n % CLIENT_PORTS
    host = 1 + (n // CLIENT_PORTS) % 65000
    return bytes([127, 0, host >> 8, host & 0xFF]), port


def parse_rotate(text: str) -> tuple[int, int | None]:
    """`size=N[K|M|G][,count=N]` (like dumpcap -b) -> (bytes, count or None)."""
    size = None
    count = None
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key == "size":
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:].upper(), 1)
            digits = value[:-1] if mult != 1 else value
            if not digits.isdigit() or int(digits) == 0:
                raise ValueError(f"--pcap-rotate: bad size {value!r}")
            size = int(digits) * mult
        elif key == "count":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--pcap-rotate: bad count {value!r}")
            count = int(value)
        else:
            raise ValueError(f"--pcap-rotate: unknown key {key!r} (size=N[K|M|G],count=N)")
    if size is None:
        raise ValueError("--pcap-rotate needs size=N[K|M|G]")
    return size, count


class PcapngSink(BaseSink):
    """Writes every frame as a TCP segment of its connection's synthetic stream.

    Rotation (`rotate=(size, count)`): like dumpcap's ring buffer, files are named
    `STEM_NNNNN_YYYYmmddHHMMSS.pcapng`; a file is closed once it reaches `size` bytes and
    at most `count` files are kept. `control("reopen")` (SIGHUP) starts a new file at the
    configured path, as logrotate's `create` expects. Every file is valid on its own: open
    streams get a fresh handshake in each new file.
    """

    title = "pcapng capture"

    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        if not live:
            group.add_argument(
                "--pcap",
                metavar="OUT",
                help="also write an annotated tpmsniff pcapng (`-`: to standard output, and the "
                "--output text to stderr)",
            )
            return
        group.add_argument(
            "--pcap",
            metavar="FILE",
            help="write an annotated pcapng (mode 0600); `-` streams it to standard output (the "
            "console then goes to stderr) and a named pipe gets it message by message, e.g. "
            "for `wireshark -k -i -`",
        )
        group.add_argument(
            "--pcap-rotate",
            metavar="size=N[K|M|G][,count=N]",
            help="ring buffer like dumpcap -b: a new file every N bytes, keeping at most count "
            "files named FILE_NNNNN_YYYYmmddHHMMSS.pcapng",
        )

    @classmethod
    def check_options(cls, args: argparse.Namespace, live: bool) -> None:
        if not live:
            return  # `decode` opens it at once and says why it cannot
        if args.pcap_rotate:
            if not args.pcap:
                raise OptionError("--pcap-rotate needs --pcap")
            if is_stream(args.pcap):
                raise OptionError("--pcap-rotate needs a file, not a pipe or standard output")
            try:
                parse_rotate(args.pcap_rotate)
            except ValueError as exc:
                raise OptionError(str(exc)) from None
            folder = os.path.dirname(os.path.abspath(args.pcap))
            if not os.access(folder, os.W_OK):
                raise OptionError(f"capture directory {folder}: not writable")
            return  # the ring's files are named from --pcap
        if args.pcap and not is_stream(args.pcap):  # `-`, a pipe: opened by the sink
            check_writable(args.pcap)

    @classmethod
    def takes_stdout(cls, args: argparse.Namespace) -> bool:
        return bool(args.pcap == STDOUT)

    @classmethod
    def waits_on_open(cls, args: argparse.Namespace) -> bool:
        return bool(args.pcap) and is_stream(args.pcap)  # a named pipe waits for its reader

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> PcapngSink | None:
        if not args.pcap:
            return None
        rotate = args.pcap_rotate if ctx.live else None
        return cls(args.pcap, parse_rotate(rotate) if rotate else None)

    def __init__(self, path: str, rotate: tuple[int, int | None] | None = None) -> None:
        from .pcapfile import segment  # dpkt: imported with the first capture, not before

        self._segment = segment
        self.path = path
        self.rotate = rotate
        self._ring: list[str] = []
        self._n = 0
        self._streams: dict[int, _Stream] = {}
        self._comments: dict[tuple[object, ...], tuple[TpmInfo, str]] = {}
        self._failed = False
        self._w: PcapngWriter | None = None
        self._w = self._open(first=True)

    def _open(self, first: bool = False) -> PcapngWriter:
        from .pcapfile import PcapngWriter

        if self.rotate is None:
            return PcapngWriter(self.path, append=not first)
        self._n += 1
        stem, dot, ext = self.path.rpartition(".")
        if not dot or "/" in ext:
            stem, ext = self.path, "pcapng"
        name = f"{stem}_{self._n:05d}_{time.strftime('%Y%m%d%H%M%S')}.{ext}"
        w = PcapngWriter(name)
        self._ring.append(name)
        count = self.rotate[1]
        while count is not None and len(self._ring) > count:
            old = self._ring.pop(0)
            try:
                os.unlink(old)
            except OSError as exc:
                log.warning("could not remove old capture", path=old, error=exc.strerror)
        return w

    def _next_file(self) -> None:
        """Close the current file and start the next; open streams restart with a handshake."""
        if self._w is not None:
            try:
                self._w.close()
            except OSError as exc:
                self._fail(exc)
                return
        try:
            self._w = self._open()
        except OSError as exc:
            self._fail(exc)
            return
        for st in self._streams.values():
            st.started = False
        log.info("capture file started", path=self._w.path)

    def control(self, what: str) -> None:
        if what == "reopen" and not self._failed and not (self._w and self._w.stream):
            self._next_file()

    @property
    def files(self) -> list[str]:
        return list(self._ring) if self.rotate else [self.path]

    # -- stream bookkeeping -------------------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        ip, port = stream_endpoint(info.conn)
        server = CTRL_PORT if info.channel is Channel.CTRL else TPM_PORT
        isn = (info.conn * 0x10001) & 0x7FFFFFFF
        label = f"conn {info.conn} {info.channel} {info.peer} -> {info.upstream}"
        self._streams[info.conn] = _Stream(
            info.conn, ip, port, server, isn + 1, (isn ^ 0x5A5A5A5A) + 1, label
        )

    def _start(self, st: _Stream, ts: float) -> None:
        """SYN, SYN+ACK, ACK leading up to the stream's current sequence numbers."""
        st.started = True
        c, s = st.client_ip, b"\x7f\x00\x00\x01"
        cp, sp = st.client_port, st.server_port
        self._emit(
            ts, self._segment(c, s, cp, sp, st.cseq - 1, 0, TH_SYN), f"{st.label}: open", OUTBOUND
        )
        self._emit(
            ts,
            self._segment(s, c, sp, cp, st.sseq - 1, st.cseq, TH_SYN | TH_ACK),
            f"conn {st.conn} open (SYN+ACK)",
            INBOUND,
        )
        self._emit(
            ts,
            self._segment(c, s, cp, sp, st.cseq, st.sseq, TH_ACK),
            f"conn {st.conn} open (ACK)",
            OUTBOUND,
        )

    def conn_close(self, conn: int, ts: float) -> None:
        st = self._streams.pop(conn, None)
        if st is None or not st.started:
            return
        c, s = st.client_ip, b"\x7f\x00\x00\x01"
        cp, sp = st.client_port, st.server_port
        self._emit(
            ts,
            self._segment(c, s, cp, sp, st.cseq, st.sseq, TH_FIN | TH_ACK),
            f"conn {conn} close (FIN)",
            OUTBOUND,
        )
        self._emit(
            ts,
            self._segment(s, c, sp, cp, st.sseq, st.cseq + 1, TH_FIN | TH_ACK),
            f"conn {conn} close (FIN+ACK)",
            INBOUND,
        )
        self._emit(
            ts,
            self._segment(c, s, cp, sp, st.cseq + 1, st.sseq + 1, TH_ACK),
            f"conn {conn} close (ACK)",
            OUTBOUND,
        )

    # -- messages -------------------------------------------------------------
    def frame(self, f: Frame) -> None:
        st = self._streams.get(f.conn)
        if st is None:  # a frame without conn_open (offline input): make the stream up
            self.conn_open(ConnInfo(f.conn, f.channel, "?", "?", f.ts))
            st = self._streams[f.conn]
        if not st.started:
            self._start(st, f.ts)
        comment = self._comment(f)
        for piece, note in self._pieces(f, comment):
            self._data(st, f, piece, note)
        if self.rotate is not None and self._w is not None and self._w.size >= self.rotate[0]:
            self._next_file()

    def _comment(self, f: Frame) -> str:
        """one_line(f), made once for frames that share their decode (the codec hands out
        one frozen TpmInfo for every repeat of a session-less command): one_line reads
        only the decode and the keyed fields. The entry keeps the TpmInfo alive, so its
        id is not reused while cached."""
        t = f.tpm
        if t is None or f.ctrl is not None:
            return one_line(f)
        key = (id(t), f.conn, f.channel, f.direction, f.locality, f.framing, f.error)
        hit = self._comments.get(key)
        if hit is not None and hit[0] is t:
            return hit[1]
        if len(self._comments) >= COMMENT_CACHE:
            self._comments.clear()
        text = one_line(f)
        self._comments[key] = (t, text)
        return text

    def _pieces(self, f: Frame, comment: str) -> list[tuple[bytes, str]]:
        """Split a message so each segment holds exactly one TPM message (or prefix/trailer)."""
        raw = f.raw
        if f.framing is Framing.MSSIM and f.tpm is not None:
            end = f.prefix + f.tpm.size
            out = [
                (raw[: f.prefix], f"conn {f.conn} mssim prefix of {f.name}"),
                (raw[f.prefix : end], comment),
            ]
            if end < len(raw):
                out.append((raw[end:], f"conn {f.conn} mssim trailer of {f.name}"))
            return out
        if len(raw) <= MAX_SEGMENT:
            return [(raw, comment)]
        chunks = [raw[i : i + MAX_SEGMENT] for i in range(0, len(raw), MAX_SEGMENT)]
        return [
            (c, comment if i == 0 else f"conn {f.conn} {f.name} continued ({i + 1}/{len(chunks)})")
            for i, c in enumerate(chunks)
        ]

    def _data(self, st: _Stream, f: Frame, payload: bytes, comment: str) -> None:
        c, s = st.client_ip, b"\x7f\x00\x00\x01"
        fl = TH_PSH | TH_ACK
        if f.direction is Direction.COMMAND:
            pkt = self._segment(c, s, st.client_port, st.server_port, st.cseq, st.sseq, fl, payload)
            st.cseq = (st.cseq + len(payload)) & 0xFFFFFFFF
            self._emit(f.ts, pkt, comment, OUTBOUND)
        else:
            pkt = self._segment(s, c, st.server_port, st.client_port, st.sseq, st.cseq, fl, payload)
            st.sseq = (st.sseq + len(payload)) & 0xFFFFFFFF
            self._emit(f.ts, pkt, comment, INBOUND)

    def _emit(self, ts: float, pkt: bytes, comment: str, flags: int) -> None:
        if self._w is None:
            return
        try:
            self._w.packet(ts, pkt, comment, flags)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            log.error(
                "capture write failed; relay continues without capture",
                path=self._w.path if self._w else self.path,
                error=exc.strerror or str(exc),
            )
        self._failed = True
        self.exit_code = EXIT_CAPTURE_LOST
        if self._w is not None:
            with contextlib.suppress(OSError):
                self._w.close()
            self._w = None

    def flush(self) -> None:
        """Write what is queued (the pipeline calls this after each batch of records)."""
        if self._w is not None:
            try:
                self._w.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        for conn in list(self._streams):
            self.conn_close(conn, time.time())
        if self._w is not None:
            try:
                self._w.close()
            except OSError as exc:
                self._fail(exc)
            self._w = None
