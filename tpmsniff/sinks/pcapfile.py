"""pcapng files: the section and interface header (dpkt, once per file), one Enhanced
Packet Block per message (written in batches), and the synthetic Ethernet/IPv4/TCP frame
each message travels in (layout: sinks/pcapng.py, docs/pcapng.md). Imported only once a
capture is opened."""

from __future__ import annotations

import contextlib
import os
import struct

import dpkt
from dpkt import pcapng

from .. import __version__
from ..safefile import is_stream, open_private, open_stream

EPB_FLAGS = 2


BUFFER = 64 << 10  # bytes of EPBs queued before a write, whatever the batch


class PcapngWriter:
    """Block-level writer: SHB + IDB at once, then EPBs queued and written by flush()
    (or once BUFFER bytes are queued) in one write: whole blocks only."""

    def __init__(self, path: str, append: bool = False) -> None:
        """append: add a new section to an existing file (a valid pcapng either way)."""
        self.path = path
        self.stream = is_stream(path)  # `-` or a named pipe: written as it comes
        # captures hold secrets: 0600, no symlink followed, only our own regular file
        # (or our own named pipe)
        self._fd = open_stream(path) if self.stream else open_private(path, append=append)
        self.size = 0  # bytes written or queued
        self._buf = bytearray()
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
        head = bytes(shb) + bytes(idb)
        try:
            self._write(head)
            self.size = len(head)
        except OSError as exc:  # e.g. disk full: the capture cannot start
            self.close()
            raise OSError(exc.errno, exc.strerror, path) from None

    def _write(self, data: bytes | bytearray) -> None:
        """Write whole blocks, or none: a failed write (disk full) is cut back off, so
        the file always ends on a complete block and stays readable."""
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
        finally:
            view.release()

    def packet(self, ts: float, data: bytes, comment: str, flags: int) -> None:
        """Queue one EPB; it is written by the next flush(), at most BUFFER bytes later."""
        block = epb(ts, data, comment, flags)
        self._buf += block
        self.size += len(block)
        if len(self._buf) >= BUFFER:
            self.flush()

    def flush(self) -> None:
        """Write every queued block in one write (the pipeline calls this after each batch
        of records, so a live reader sees them at once). Raises OSError; the blocks of a
        failed write are not retried: the file keeps the whole blocks that fit."""
        if not self._buf or self._fd < 0:
            return
        data, self._buf = self._buf, bytearray()
        try:
            self._write(data)
        except OSError:  # e.g. disk full: keep as many whole blocks as fit, as before
            self._write_each(data)
            raise

    def _write_each(self, data: bytearray) -> None:
        """Write the blocks of `data` one by one until one does not fit."""
        off = 0
        with contextlib.suppress(OSError):
            while off + 8 <= len(data):
                (length,) = _U32.unpack_from(data, off + 4)
                self._write(data[off : off + length])
                off += length

    def close(self) -> None:
        """Flush, then close (the blocks of a failed flush are lost: OSError)."""
        try:
            self.flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._buf = bytearray()


# -- the per-message hot path: packed with struct, not built from dpkt objects --------
# (dpkt's classes cost ~140 µs per message; tests/unit/sinks/test_pcapfile.py proves
# these bytes equal dpkt's, field by field and as a whole, for any input)
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, interface, ts high/low, caplen, len
_OPT = struct.Struct("<HH")
_FLAGS_END = struct.Struct("<HHIHH")  # epb_flags option (code 2, length 4, value), opt_endofopt
_U32 = struct.Struct("<I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4
# Ethernet (zero MACs, IPv4) + IPv4 (no options, DF, TTL 64, TCP) + TCP (no options)
_ETH_IP_TCP = struct.Struct("!6s6sH BBHHHBBH4s4s HHIIBBHHH")
_ETH_ZERO = b"\0" * 6
_ETHERTYPE_IPV4 = 0x0800
_IPV4_DF = 0x4000
_TCP_PROTO = 6


def epb(ts: float, data: bytes, comment: str, flags: int) -> bytes:
    """One Enhanced Packet Block (interface 0, µs timestamps) with opt_comment and
    epb_flags, laid out exactly as dpkt's EnhancedPacketBlockLE writes it."""
    us = round(ts * 1e6)
    text = comment.encode()
    n = len(data)
    tlen = len(text)
    total = 28 + n + (-n & 3) + 4 + tlen + (-tlen & 3) + 12 + 4
    return b"".join(
        (
            _EPB_HEAD.pack(6, total, 0, us >> 32, us & 0xFFFFFFFF, n, n),
            data,
            _PAD[n & 3],
            _OPT.pack(1, tlen),
            text,
            _PAD[tlen & 3],
            _FLAGS_END.pack(EPB_FLAGS, 4, flags, 0, 0),
            _U32.pack(total),
        )
    )


def _fold(total: int) -> int:
    """The Internet checksum (RFC 1071) of words summing to `total` (never all zero)."""
    r = total % 0xFFFF
    return 0xFFFF - r if r else 0


def segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
) -> bytes:
    """Ethernet/IPv4/TCP frame holding `payload`, with both checksums (as dpkt builds
    it: IP id 0, DF, TTL 64, window 65535, no options)."""
    n = len(payload)
    tcp_len = 20 + n
    ip_len = 20 + tcp_len
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    # one's-complement sums: 2**16 = 1 (mod 0xFFFF), so a big-endian integer of the
    # bytes is congruent to the sum of its 16-bit words (an odd tail padded with zero)
    addrs = s + d
    ip_sum = _fold(0x4500 + ip_len + _IPV4_DF + (64 << 8 | _TCP_PROTO) + addrs)
    body = int.from_bytes(payload + b"\0", "big") if n & 1 else int.from_bytes(payload, "big")
    tcp_total = (
        addrs
        + _TCP_PROTO
        + tcp_len
        + (sport << 16 | dport)
        + seq
        + ack
        + (0x5000 | flags)
        + 0xFFFF
        + body
    )
    tcp_sum = _fold(tcp_total)
    head = _ETH_IP_TCP.pack(
        _ETH_ZERO,
        _ETH_ZERO,
        _ETHERTYPE_IPV4,
        0x45,
        0,
        ip_len,
        0,
        _IPV4_DF,
        64,
        _TCP_PROTO,
        ip_sum,
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        0x50,
        flags,
        0xFFFF,
        tcp_sum,
        0,
    )
    return head + payload
