"""Reading pcapng back with dpkt, keeping what dpkt's Reader drops: comments and flags.

Used to verify captures and as the base of offline decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dpkt
from dpkt import pcapng

from .sinks.pcapng import CTRL_PORT, TPM_PORT


class CaptureError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Packet:
    number: int  # 1-based frame number, as Wireshark counts
    ts: float
    linktype: int
    data: bytes
    comment: str | None
    flags: int | None


# EPB fixed fields (type, len, iface, ts_high, ts_low, caplen, pkt_len): dpkt's own layout
_EPB_FIXED = pcapng.EnhancedPacketBlock.__hdr_fmt__[1:-1]
_EPB_HDR = pcapng.EnhancedPacketBlock.__hdr_len__ - 4


def read_pcapng(path: str, options: bool = True) -> Iterator[Packet]:
    """Yield every EPB of a (little- or big-endian) pcapng file.

    options=False skips decoding EPB options (comment, flags): offline decoding does not
    need them, and dpkt's option parsing is most of the cost of reading a capture."""
    with open(path, "rb") as fh:
        buf = fh.read()
    if buf[:4] != b"\x0a\x0d\x0d\x0a" or len(buf) < 12:
        raise CaptureError(f"{path}: not a pcapng file")
    off = 0
    number = 0
    le = True
    links: list[tuple[int, float]] = []
    while off + 12 <= len(buf):
        if buf[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            le = buf[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a"
            links = []
        order = "<" if le else ">"
        btype, blen = struct.unpack_from(order + "II", buf, off)
        if blen < 12 or off + blen > len(buf):
            raise CaptureError(f"{path}: truncated block at byte {off}")
        block = buf[off : off + blen]
        if btype == pcapng.PCAPNG_BT_IDB:
            idb = (pcapng.InterfaceDescriptionBlockLE if le else pcapng.InterfaceDescriptionBlock)(
                block
            )
            res = 1e-6
            for opt in idb.opts:
                if opt.code == pcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
                    v = opt.data[0]
                    res = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
            links.append((idb.linktype, res))
        elif btype == pcapng.PCAPNG_BT_EPB:
            number += 1
            comment = None
            flags = None
            if options:
                epb = (pcapng.EnhancedPacketBlockLE if le else pcapng.EnhancedPacketBlock)(block)
                iface, ts_high, ts_low, data = epb.iface_id, epb.ts_high, epb.ts_low, epb.pkt_data
                for opt in epb.opts:
                    if opt.code == pcapng.PCAPNG_OPT_COMMENT:
                        comment = getattr(opt, "text", None) or opt.data.decode("utf-8", "replace")
                    elif opt.code == 2 and len(opt.data) == 4:
                        flags = struct.unpack(order + "I", opt.data)[0]
            else:
                _, _, iface, ts_high, ts_low, caplen, _ = struct.unpack_from(
                    order + _EPB_FIXED, block
                )
                data = block[_EPB_HDR : _EPB_HDR + caplen]
            link, res = links[iface] if iface < len(links) else (1, 1e-6)
            ts = ((ts_high << 32) | ts_low) * res
            yield Packet(number, ts, link, data, comment, flags)
        off += blen


@dataclass(frozen=True, slots=True)
class Segment:
    packet: Packet
    stream: tuple[bytes, int]  # client address and port
    server_port: int
    to_server: bool
    payload: bytes


def tcp_segments(path: str) -> Iterator[Segment]:
    """TCP payload segments of a tpmsniff capture (Ethernet/IPv4), handshakes skipped."""
    for p in read_pcapng(path):
        eth = dpkt.ethernet.Ethernet(p.data)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        if not tcp.data:
            continue
        to_server = tcp.dport in (TPM_PORT, CTRL_PORT)
        client = (ip.src, tcp.sport) if to_server else (ip.dst, tcp.dport)
        server = tcp.dport if to_server else tcp.sport
        yield Segment(p, client, server, to_server, bytes(tcp.data))


def messages(path: str, port: int = TPM_PORT) -> list[tuple[bool, bytes]]:
    """(to_server, bytes) per message in capture order, MS-sim pieces joined back.

    Every client is strictly request/response, so a run of same-direction segments of
    one stream is one message.
    """
    out: list[list] = []
    last: dict[tuple[bytes, int], int] = {}
    for s in tcp_segments(path):
        if s.server_port != port:
            continue
        i = last.get(s.stream)
        if i is not None and out[i][0] == s.to_server and i == len(out) - 1:
            out[i][1] += s.payload
        else:
            out.append([s.to_server, bytearray(s.payload)])
            last[s.stream] = len(out) - 1
    return [(d, bytes(b)) for d, b in out]
