"""Reading pcapng block by block with dpkt, keeping what dpkt's Reader drops: comments
and flags. The base of offline decoding, and what the tests read captures back with.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dpkt import pcapng


class CaptureError(Exception):
    """The capture breaks at byte `offset` (None: at its start)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


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
            raise CaptureError(f"{path}: truncated block at byte {off}", off)
        if struct.unpack_from(order + "I", buf, off + blen - 4)[0] != blen:
            raise CaptureError(f"{path}: damaged block length at byte {off}", off)
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
    if off != len(buf):
        raise CaptureError(f"{path}: truncated block at byte {off}", off)
