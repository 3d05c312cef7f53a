"""pcapng files, written with dpkt: the section and interface header, one Enhanced Packet
Block per write, and the synthetic Ethernet/IPv4/TCP frame each message travels in
(layout: sinks/pcapng.py, docs/pcapng.md). Imported only once a capture is opened."""

from __future__ import annotations

import contextlib
import os
import struct

import dpkt
from dpkt import pcapng

from .. import __version__
from ..safefile import is_stream, open_private, open_stream

EPB_FLAGS = 2


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
    tcp = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload
    )
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, df=1, data=tcp)
    ip.len = 20 + len(tcp)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x00" * 6, dst=b"\x00" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)
