"""SPI bytes -> TPM register accesses (TCG PTP "SPI bit protocol"), and raw samples -> SPI.

One TPM SPI transaction is one chip-select assertion: a header byte (bit 7 set: read;
bits 5:0: size - 1), three address bytes (`D4 lx rr`: locality in bits 15:12), then, if
the TPM held MISO bit 0 low during the last address byte, wait bytes until one has MISO
bit 0 high, then `size` data bytes (MOSI for a write, MISO for a read).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ...codec.tis import Access, BusWarning

SPI_TPM_BASE = 0xD4  # top address byte of the TPM's register space


@dataclass(frozen=True, slots=True)
class SpiFrame:
    """The bytes of one chip-select assertion, MOSI and MISO side by side."""

    ts: float
    mosi: bytes
    miso: bytes
    where: str = ""


def address_access(
    ts: float, write: bool, addr: int, data: bytes, where: str
) -> Access | BusWarning:
    """An Access for a 24-bit TPM SPI address, or a warning if it is not the TPM's."""
    if addr >> 16 != SPI_TPM_BASE:
        return BusWarning(ts, where, f"address 0x{addr:06x} is not in the TPM's space")
    return Access(ts, write, (addr >> 12) & 0xF, addr & 0xFFF, data, where)


def frame_access(f: SpiFrame) -> Access | BusWarning:
    """Decode one SPI transaction; anything that is not one is a warning."""
    n = min(len(f.mosi), len(f.miso))
    if n < 4:
        return BusWarning(f.ts, f.where, f"SPI transfer of {n} byte(s) is no TPM transaction")
    hdr = f.mosi[0]
    read = bool(hdr & 0x80)
    size = (hdr & 0x3F) + 1
    addr = int.from_bytes(f.mosi[1:4], "big")
    at = 4
    if not f.miso[3] & 1:  # the TPM inserts wait states
        while at < n and not f.miso[at] & 1:
            at += 1
        at += 1  # the byte that ends the wait
    data = (f.miso if read else f.mosi)[at : at + size]
    if len(data) < size:
        return BusWarning(
            f.ts, f.where, f"SPI transaction cut short: {len(data)} of {size} data bytes"
        )
    return address_access(f.ts, not read, addr, bytes(data), f.where)


def frame_accesses(frames: Iterable[SpiFrame]) -> Iterator[Access | BusWarning]:
    for f in frames:
        yield frame_access(f)


class SpiSampler:
    """SPI mode 0 from signal levels: CS# low frames a transfer, MOSI/MISO are sampled
    on each rising CLK edge, most significant bit first. Feed the levels after every
    change, in time order."""

    def __init__(self) -> None:
        self._cs = 1
        self._clk = 0
        self._active = False
        self._ts = 0.0
        self._where = ""
        self._bits = 0
        self._mosi = 0
        self._miso = 0
        self._out_mosi = bytearray()
        self._out_miso = bytearray()

    def feed(
        self, ts: float, cs: int, clk: int, mosi: int, miso: int, where: str = ""
    ) -> SpiFrame | BusWarning | None:
        out: SpiFrame | BusWarning | None = None
        if cs != self._cs:
            if not cs:  # asserted
                self._active = True
                self._ts, self._where = ts, where
                self._bits = self._mosi = self._miso = 0
                self._out_mosi, self._out_miso = bytearray(), bytearray()
            elif self._active:
                out = self._end(ts)
            self._cs = cs
        if self._active and clk and not self._clk:
            self._mosi = (self._mosi << 1) | (mosi & 1)
            self._miso = (self._miso << 1) | (miso & 1)
            self._bits += 1
            if self._bits == 8:
                self._out_mosi.append(self._mosi)
                self._out_miso.append(self._miso)
                self._bits = self._mosi = self._miso = 0
        self._clk = clk
        return out

    def _end(self, ts: float) -> SpiFrame | BusWarning:
        self._active = False
        if self._bits:
            return BusWarning(
                ts, self._where, f"chip select released after {self._bits} stray bit(s)"
            )
        return SpiFrame(self._ts, bytes(self._out_mosi), bytes(self._out_miso), self._where)

    def finish(self) -> BusWarning | None:
        if self._active and (self._out_mosi or self._bits):
            return BusWarning(self._ts, self._where, "the capture ends inside an SPI transfer")
        return None
