"""Offline captures: pcapng and classic pcap of any common link type.

Captures are reassembled per TCP direction (retransmissions and out-of-order segments
handled) and replayed into the same channel machines as the live relay, which split and
join segments into messages by the TPM size field.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import dpkt

from ..codec.annotate import Annotator
from ..codec.channels import CtrlChannel, DataChannel, channel_for
from ..codec.roles import detect_role
from ..model import CTRL_PORT, TPM_PORT, Frame
from .detect import InputError
from .pcapng import CaptureError, read_pcapng

TPM_PORTS = {TPM_PORT, TPM_PORT + 1, CTRL_PORT}
RAW_IP = {12, 14, 101, 228}


# -- link layers -------------------------------------------------------------------
def ip_packet(linktype: int, data: bytes) -> dpkt.ip.IP | dpkt.ip6.IP6 | None:
    """The IP packet inside a frame of `linktype`, or None if it carries none."""
    if linktype == 1:
        if data[12:14] == b"\x08\x00":  # plain IPv4: skip building the Ethernet object
            return dpkt.ip.IP(data[14:])
        pkt = dpkt.ethernet.Ethernet(data).data
    elif linktype == 113:
        pkt = dpkt.sll.SLL(data).data
    elif linktype == 276:
        pkt = dpkt.sll2.SLL2(data).data
    elif linktype in (0, 108):
        pkt = dpkt.loopback.Loopback(data).data
    elif linktype in RAW_IP:
        pkt = dpkt.ip.IP(data) if data[:1] and data[0] >> 4 == 4 else dpkt.ip6.IP6(data)
    elif linktype == 229:
        pkt = dpkt.ip6.IP6(data)
    else:
        raise InputError(f"unsupported link type {linktype}")
    return pkt if isinstance(pkt, dpkt.ip.IP | dpkt.ip6.IP6) else None


# (src address, source port, dst address, destination port, seq, flags, payload)
Segment = tuple[bytes, int, bytes, int, int, int, bytes]
_IP4_LEN_FRAG = struct.Struct("!H2xH")  # total length, flags + fragment offset (at byte 2)
_TCP_HEAD = struct.Struct("!HHI4xH")  # ports, seq, data offset + flags


def tcp_segment(linktype: int, data: bytes) -> Segment | None:
    """The TCP segment in a frame of `linktype`, or None if it carries none.

    IPv4 in Ethernet or raw IP (every tpmsniff capture, and most others) is read with
    struct, with exactly dpkt's rules (tests/unit/inputs/test_capture.py checks them
    against dpkt on any bytes); anything else goes through dpkt. Raises InputError for
    a link type it does not know, and dpkt's errors for a frame dpkt cannot read."""
    if linktype == 1:
        if data[12:14] == b"\x08\x00":
            return _tcp4(data[14:])
    elif linktype in RAW_IP and data[:1] and data[0] >> 4 == 4:
        return _tcp4(data)
    ip = ip_packet(linktype, data)
    if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    tcp = ip.data
    return ip.src, tcp.sport, ip.dst, tcp.dport, tcp.seq, tcp.flags, bytes(tcp.data)


def _tcp4(buf: bytes) -> Segment | None:
    """dpkt.ip.IP(buf) and its TCP, when it has one: a header of at least 20 bytes, the
    payload cut at the total length (unless 0), no TCP unless protocol 6 at fragment
    offset 0 and a TCP header of at least 20 bytes."""
    if len(buf) < 20:
        return None  # dpkt: NeedData
    ihl = (buf[0] & 0xF) << 2
    if ihl < 20:
        return None  # dpkt: invalid header length
    total, frag = _IP4_LEN_FRAG.unpack_from(buf, 2)
    if buf[9] != 6 or frag & 0x1FFF:
        return None
    seg = buf[ihl:total] if total else buf[ihl:]
    if len(seg) < 20:
        return None
    sport, dport, seq, off_flags = _TCP_HEAD.unpack_from(seg)
    off = (off_flags >> 12) << 2
    if off < 20:
        return None
    return buf[12:16], sport, buf[16:20], dport, seq, off_flags & 0x1FF, seg[off:]


def _packets(path: str, fmt: str) -> Iterator[tuple[int, float, int, bytes]]:
    if fmt == "pcapng":
        for p in read_pcapng(path, options=False):
            yield p.number, p.ts, p.linktype, p.data
        return
    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)  # validates the file header
        except (ValueError, dpkt.dpkt.NeedData) as exc:
            raise CaptureError(f"{path}: not a pcap file ({exc})") from None
        link = reader.datalink()
        fh.seek(0)
        magic = fh.read(4)
        hdr_cls = (
            dpkt.pcap.LEPktHdr
            if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
            else dpkt.pcap.PktHdr
        )
        divisor = 1e9 if magic in (b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1") else 1e6
        fh.seek(24)
        n = 0
        while True:
            raw = fh.read(16)
            if not raw:
                return
            at = fh.tell() - len(raw)
            if len(raw) < 16:
                raise CaptureError(f"{path}: truncated after packet {n} at byte {at}", at)
            hdr = hdr_cls(raw)
            buf = fh.read(hdr.caplen)
            if len(buf) < hdr.caplen:  # dpkt's Reader would hand this on silently
                raise CaptureError(f"{path}: truncated after packet {n} at byte {at}", at)
            n += 1
            yield n, hdr.tv_sec + hdr.tv_usec / divisor, link, buf


# -- TCP reassembly ----------------------------------------------------------------
MASK = 0xFFFFFFFF
MAX_PENDING = 4 << 20  # out-of-order bytes held per direction before giving up on a gap


@dataclass(slots=True)
class Reassembler:
    """One direction of a TCP stream: segments in any order, retransmitted or repacketised,
    out as the in-order bytes each one makes available (sequence numbers wrap at 2**32)."""

    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    held: int = 0
    gaps: int = 0  # gaps given up on: bytes the capture never had (the read is incomplete)

    def feed(self, seq: int, payload: bytes, syn_fin: bool) -> bytes:
        """In-order new bytes made available by this segment. SYN and FIN take one
        sequence number each; a segment that is entirely old changes nothing."""
        if self.next_seq is None:
            self.next_seq = seq
        span = len(payload) + (1 if syn_fin else 0)
        behind = (self.next_seq - seq) & MASK
        if 0 < behind < 0x80000000:  # starts before what we have
            if behind >= span:
                return b""  # a pure retransmission
            payload = payload[behind:]
            span -= behind
        elif behind != 0:  # starts after a gap: hold it
            if len(payload) > len(self.pending.get(seq, b"")):
                self.held += len(payload) - len(self.pending.get(seq, b""))
                self.pending[seq] = payload
            if self.held > MAX_PENDING:  # the gap will never fill: skip it
                self._skip_gap()
                return self._drain(bytearray())
            return b""
        self.next_seq = (self.next_seq + span) & MASK
        return self._drain(bytearray(payload))

    def _drain(self, out: bytearray) -> bytes:
        """Append held segments that now start at or before next_seq."""
        nxt = self.next_seq
        assert nxt is not None
        progress = True
        while progress and self.pending:
            progress = False
            for s in list(self.pending):
                data = self.pending[s]
                behind = (nxt - s) & MASK
                if behind < 0x80000000:
                    del self.pending[s]
                    self.held -= len(data)
                    if behind < len(data):
                        out += data[behind:]
                        nxt = (s + len(data)) & MASK
                    progress = True
        self.next_seq = nxt
        return bytes(out)

    def _skip_gap(self) -> None:
        nxt = self.next_seq
        assert nxt is not None
        self.gaps += 1
        self.next_seq = min(self.pending, key=lambda s: (s - nxt) & MASK)


@dataclass(slots=True)
class _Stream:
    conn: int
    server: tuple[bytes, int]
    dirs: dict[bool, Reassembler] = field(
        default_factory=lambda: {True: Reassembler(), False: Reassembler()}
    )
    machine: DataChannel | CtrlChannel | None = None


def frames_from_capture(path: str, fmt: str, ann: Annotator) -> Iterator[Frame]:
    streams: dict[frozenset[tuple[bytes, int]], _Stream] = {}
    unsupported: set[int] = set()
    ends: dict[tuple[int, bool], int] = {}  # where each direction's last segment ended
    try:
        for number, ts, link, data in _packets(path, fmt):
            try:
                got = tcp_segment(link, data)
            except InputError:
                if link not in unsupported:
                    unsupported.add(link)
                continue
            except (dpkt.dpkt.UnpackError, ValueError, IndexError, struct.error):
                continue
            if got is None:
                continue
            src, sport, dst, dport, seq, flags, payload = got
            a, b = (src, sport), (dst, dport)
            key = frozenset((a, b))
            st = streams.get(key)
            if st is None:
                if flags & dpkt.tcp.TH_SYN and not flags & dpkt.tcp.TH_ACK:
                    server = b  # the SYN's destination
                elif dport in TPM_PORTS or (sport not in TPM_PORTS and dport < sport):
                    server = b
                else:
                    server = a
                st = streams[key] = _Stream(len(streams) + 1, server)
            to_server = b == st.server
            syn_fin = bool(flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN))
            new = st.dirs[to_server].feed(seq, payload, syn_fin)
            ends[(st.conn, to_server)] = (seq + len(payload) + syn_fin) & MASK
            if not new:
                continue
            if st.machine is None:
                role = detect_role(new, [], "auto", unix=False) if to_server else "data"
                st.machine = channel_for("ctrl" if st.server[1] == CTRL_PORT else role)
            if to_server:
                _, events = st.machine.from_client(new)
            else:
                _, events = st.machine.from_server(new)
            for ev in events:
                yield ann.annotate(st.conn, ts, ev, number)
    except CaptureError as exc:
        raise Partial(str(exc), exc.offset) from None
    if unsupported and not streams:
        raise InputError(
            f"{path}: unsupported link type {', '.join(map(str, sorted(unsupported)))}"
        )
    for st in streams.values():  # sequence space the capture never had: a gap
        for to_server, d in st.dirs.items():
            end = ends.get((st.conn, to_server))
            ahead = 0 if end is None or d.next_seq is None else (end - d.next_seq) & MASK
            if d.pending or d.gaps or 0 < ahead < 0x80000000:
                side = "client" if to_server else "server"
                raise Partial(f"{path}: TCP stream {st.conn} ({side} side) has a gap")


class Partial(Exception):
    """The input broke part-way at byte `offset`: frames before the break were yielded."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
