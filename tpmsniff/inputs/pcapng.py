"""Reading pcapng block by block with dpkt, keeping what dpkt's Reader drops: comments
and flags. The base of offline decoding, and what the tests read captures back with.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dpkt
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


_MALFORMED = (struct.error, ValueError, IndexError, UnicodeDecodeError, dpkt.dpkt.Error)
_SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
_BOM_LE, _BOM_BE = b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"


def read_pcapng(path: str, options: bool = True) -> Iterator[Packet]:
    """Yield every EPB of a (little- or big-endian) pcapng file.

    A block whose length is sound but whose content is not (too short for its type, a
    bad option, a capture length beyond the block) is skipped and reading goes on; a
    block length that cannot be trusted ends the file there. Either way CaptureError is
    raised after the last readable packet, naming the file and the first bad offset.

    options=False skips decoding EPB options (comment, flags): offline decoding does not
    need them, and dpkt's option parsing is most of the cost of reading a capture."""
    with open(path, "rb") as fh:
        buf = fh.read()
    if buf[:4] != _SHB_MAGIC or len(buf) < 12:
        raise CaptureError(f"{path}: not a pcapng file")
    off = 0
    number = 0
    le = True
    links: list[tuple[int, float]] = []
    bad: list[int] = []  # offsets of skipped blocks
    while off + 12 <= len(buf):
        if buf[off : off + 4] == _SHB_MAGIC:
            bom = buf[off + 8 : off + 12]
            if bom not in (_BOM_LE, _BOM_BE):
                raise CaptureError(_bad_text(path, off, bad, "section header byte order"), off)
            le = bom == _BOM_LE
            links = []
        order = "<" if le else ">"
        btype, blen = struct.unpack_from(order + "II", buf, off)
        if blen < 12 or blen % 4 or off + blen > len(buf):
            raise CaptureError(_bad_text(path, off, bad, "truncated block"), off)
        if struct.unpack_from(order + "I", buf, off + blen - 4)[0] != blen:
            raise CaptureError(_bad_text(path, off, bad, "damaged block length"), off)
        block = buf[off : off + blen]
        pkt = None
        try:
            if btype == pcapng.PCAPNG_BT_IDB:
                links.append(_link(block, le))
            elif btype == pcapng.PCAPNG_BT_EPB:
                pkt = _epb(block, le, order, links, number + 1, options)
        except _MALFORMED:
            bad.append(off)
        off += blen
        if pkt is not None:
            number += 1
            yield pkt
    if off != len(buf):
        raise CaptureError(_bad_text(path, off, bad, "truncated block"), off)
    if bad:
        raise CaptureError(_bad_text(path, bad[0], bad[1:], "malformed block"), bad[0])


def _bad_text(path: str, off: int, more: list[int], what: str) -> str:
    extra = f" ({len(more)} more malformed block(s) skipped)" if more else ""
    return f"{path}: {what} at byte {off}{extra}"


def _link(block: bytes, le: bool) -> tuple[int, float]:
    idb = (pcapng.InterfaceDescriptionBlockLE if le else pcapng.InterfaceDescriptionBlock)(block)
    res = 1e-6
    for opt in idb.opts:
        if opt.code == pcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
            v = opt.data[0]
            res = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -min(v, 30)
    return idb.linktype, res


def _epb(
    block: bytes,
    le: bool,
    order: str,
    links: list[tuple[int, float]],
    number: int,
    options: bool,
) -> Packet:
    """One EPB; raises one of _MALFORMED if it is not a sound one."""
    if len(block) < _EPB_HDR + 4:
        raise ValueError("enhanced packet block too short")
    comment = None
    flags = None
    _, _, iface, ts_high, ts_low, caplen, _ = struct.unpack_from(order + _EPB_FIXED, block)
    if caplen > len(block) - _EPB_HDR - 4:
        raise ValueError("captured length beyond the block")
    if options:
        epb = (pcapng.EnhancedPacketBlockLE if le else pcapng.EnhancedPacketBlock)(block)
        iface, ts_high, ts_low, data = epb.iface_id, epb.ts_high, epb.ts_low, epb.pkt_data
        for opt in epb.opts:
            if opt.code == pcapng.PCAPNG_OPT_COMMENT:
                comment = getattr(opt, "text", None) or opt.data.decode("utf-8", "replace")
            elif opt.code == 2 and len(opt.data) == 4:
                flags = struct.unpack(order + "I", opt.data)[0]
    else:
        data = block[_EPB_HDR : _EPB_HDR + caplen]
    link, res = links[iface] if iface < len(links) else (1, 1e-6)
    ts = ((ts_high << 32) | ts_low) * res
    return Packet(number, ts, link, data, comment, flags)


_OWN_APP = b"tpmsniff"  # the SHB shb_userappl tpmsniff writes ("tpmsniff <version>")
_OWN_COMMENT = b"conn "  # how every EPB comment tpmsniff writes begins (sinks/text.py)


def own_comment_spans(path: str) -> list[tuple[int, int]]:
    """File byte ranges [start, end) of the EPB comments tpmsniff wrote itself: in a
    section whose SHB names tpmsniff as its application, comments in tpmsniff's format.
    The raw-file scan of `check` skips them: an annotation is not a finding (a secret it
    mentions was found, once, in the frame it annotates). Never raises: a file that does
    not read as pcapng has no spans."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError:
        return []
    out: list[tuple[int, int]] = []
    if buf[:4] != _SHB_MAGIC:
        return out
    off, order, ours = 0, "<", False
    try:
        while off + 12 <= len(buf):
            if buf[off : off + 4] == _SHB_MAGIC:
                order = "<" if buf[off + 8 : off + 12] == _BOM_LE else ">"
            btype, blen = struct.unpack_from(order + "II", buf, off)
            if blen < 12 or blen % 4 or off + blen > len(buf):
                break
            if btype == pcapng.PCAPNG_BT_SHB:
                ours = any(
                    code == pcapng.PCAPNG_OPT_SHB_USERAPPL and buf[a:b].startswith(_OWN_APP)
                    for code, a, b in _options(buf, order, off + 24, off + blen - 4)
                )
            elif btype == pcapng.PCAPNG_BT_EPB and ours and blen >= _EPB_HDR + 4:
                caplen = struct.unpack_from(order + "I", buf, off + 20)[0]
                start = off + _EPB_HDR + ((caplen + 3) & ~3)
                for code, a, b in _options(buf, order, start, off + blen - 4):
                    if code == pcapng.PCAPNG_OPT_COMMENT and buf[a:b].startswith(_OWN_COMMENT):
                        out.append((a, b))
            off += blen
    except struct.error:
        pass
    return out


def _options(buf: bytes, order: str, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(code, value start, value end) of each option in buf[off:end]."""
    while off + 4 <= end:
        code, length = struct.unpack_from(order + "HH", buf, off)
        if code == pcapng.PCAPNG_OPT_ENDOFOPT:
            return
        a = off + 4
        if a + length > end:
            return
        yield code, a, a + length
        off = a + ((length + 3) & ~3)
