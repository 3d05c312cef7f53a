"""Annotated pcapng, written with dpkt, laid out for Wireshark's TPM 2.0 dissector.

Layout (docs/pcapng.md): Ethernet/IPv4/TCP on 127.0.0.1; one synthetic TCP stream per
proxied connection with a handshake before its first message and FIN at close; the TPM
side on port 2321 (control channel: 2326, which the TPM dissector does not claim); the
client on a port above 50000; exactly one message per segment, each with an opt_comment
and epb_flags (outbound = towards the TPM, inbound = from it). Every block is written
with one unbuffered write, so a killed daemon leaves a readable file.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass

import dpkt
import structlog
from dpkt import pcapng

from .. import __version__
from ..model import CTRL_PORT, TPM_PORT, Channel, ConnInfo, Direction, Frame, Framing
from ..model.exits import EXIT_CAPTURE_LOST
from ..safefile import is_stream, open_private, open_stream
from .base import BaseSink
from .text import one_line

log = structlog.get_logger("tpmsniff.pcapng")

CLIENT_PORT_BASE = 50000
CLIENT_PORTS = 15000  # 50000..64999, then the client address moves on
MAX_SEGMENT = 65000  # IPv4 payload limit; only control state blobs get near it
EPB_FLAGS = 2
INBOUND, OUTBOUND = 0b01, 0b10
TH_SYN, TH_ACK, TH_FIN, TH_PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_PUSH


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


class PcapngWriter:
    """Block-level writer: SHB + IDB once, then one EPB per write() call."""

    def __init__(self, path: str, append: bool = False) -> None:
        """append: add a new section to an existing file (a valid pcapng either way)."""
        self.path = path
        self.stream = is_stream(path)  # `-` or a named pipe: written as it comes
        # captures hold secrets: 0600, no symlink followed, only our own regular file
        # (or our own named pipe)
        self._fd = open_stream(path) if self.stream else open_private(path, append=append)
        self.size = 0
        shb = pcapng.SectionHeaderBlockLE(
            opts=[
                pcapng.PcapngOptionLE(
                    code=pcapng.PCAPNG_OPT_SHB_USERAPPL, data=f"tpmsniff {__version__}".encode()
                ),
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
            ]
        )
        idb = pcapng.InterfaceDescriptionBlockLE(
            linktype=dpkt.pcap.DLT_EN10MB,
            snaplen=0,
            opts=[
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_NAME, data=b"tpmsniff"),
                pcapng.PcapngOptionLE(
                    code=pcapng.PCAPNG_OPT_IF_DESCRIPTION,
                    data=b"TPM traffic relayed by tpmsniff: synthetic TCP, one message per segment",
                ),
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_IF_TSRESOL, data=b"\x06"),
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
            ],
        )
        try:
            self._write(bytes(shb) + bytes(idb))
        except OSError as exc:  # e.g. disk full: the capture cannot start
            self.close()
            raise OSError(exc.errno, exc.strerror, path) from None

    def _write(self, data: bytes) -> None:
        """Write one whole block, or none: a failed write (disk full) is cut back off, so
        the file always ends on a complete block and stays readable. A stream (pipe) gets
        each block as soon as it is made: nothing is buffered."""
        start = 0 if self.stream else os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            if not self.stream:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
            raise
        self.size += len(data)

    def packet(self, ts: float, data: bytes, comment: str, flags: int) -> None:
        us = round(ts * 1e6)
        epb = pcapng.EnhancedPacketBlockLE(
            ts_high=us >> 32,
            ts_low=us & 0xFFFFFFFF,
            pkt_data=data,
            opts=[
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=comment),
                pcapng.PcapngOptionLE(code=EPB_FLAGS, data=struct.pack("<I", flags)),
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
            ],
        )
        self._write(bytes(epb))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
) -> bytes:
    tcp = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload
    )
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, df=1, data=tcp)
    ip.len = 20 + len(tcp)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x00" * 6, dst=b"\x00" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)


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

    def __init__(self, path: str, rotate: tuple[int, int | None] | None = None) -> None:
        self.path = path
        self.rotate = rotate
        self._ring: list[str] = []
        self._n = 0
        self._streams: dict[int, _Stream] = {}
        self._failed = False
        self._w: PcapngWriter | None = None
        self._w = self._open(first=True)

    def _open(self, first: bool = False) -> PcapngWriter:
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
            self._w.close()
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
            ts, _segment(c, s, cp, sp, st.cseq - 1, 0, TH_SYN), f"{st.label}: open", OUTBOUND
        )
        self._emit(
            ts,
            _segment(s, c, sp, cp, st.sseq - 1, st.cseq, TH_SYN | TH_ACK),
            f"conn {st.conn} open (SYN+ACK)",
            INBOUND,
        )
        self._emit(
            ts,
            _segment(c, s, cp, sp, st.cseq, st.sseq, TH_ACK),
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
            _segment(c, s, cp, sp, st.cseq, st.sseq, TH_FIN | TH_ACK),
            f"conn {conn} close (FIN)",
            OUTBOUND,
        )
        self._emit(
            ts,
            _segment(s, c, sp, cp, st.sseq, st.cseq + 1, TH_FIN | TH_ACK),
            f"conn {conn} close (FIN+ACK)",
            INBOUND,
        )
        self._emit(
            ts,
            _segment(c, s, cp, sp, st.cseq + 1, st.sseq + 1, TH_ACK),
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
        comment = one_line(f)
        for piece, note in self._pieces(f, comment):
            self._data(st, f, piece, note)
        if self.rotate is not None and self._w is not None and self._w.size >= self.rotate[0]:
            self._next_file()

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
            pkt = _segment(c, s, st.client_port, st.server_port, st.cseq, st.sseq, fl, payload)
            st.cseq = (st.cseq + len(payload)) & 0xFFFFFFFF
            self._emit(f.ts, pkt, comment, OUTBOUND)
        else:
            pkt = _segment(s, c, st.server_port, st.client_port, st.sseq, st.cseq, fl, payload)
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
            self._w.close()
            self._w = None

    def close(self) -> None:
        for conn in list(self._streams):
            self.conn_close(conn, time.time())
        if self._w is not None:
            self._w.close()
            self._w = None
