"""I2C TPM register transactions (TCG PC Client PTP, I2C interface).

A write transfer is `reg data...`; a read is a write of `reg` alone, then a read transfer
(after a repeated START or a STOP). The locality is whatever was last written to
TPM_LOC_SEL (0x00); TPM_STS (0x18) and TPM_DATA_FIFO (0x24) sit where they do on SPI,
so the same FIFO assembler applies.

Sources: sigrok's `i2c` decoder annotations (`sigrok-cli -P i2c -A i2c`, with or
without `--protocol-decoder-samplenum`, or PulseView's export: `I²C: Address/Data:
Data write: 24`), and Saleae Logic 2's I2C analyser table export (`name,type,
start_time,duration,"ack","address","read","data"`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ...codec.tis import Access, BusWarning
from ..errors import InputError

REG_LOC_SEL = 0x00
_ANN = re.compile(
    r"^\s*(?:(?P<ss>\d+)(?:-\d+)?\s+)?(?:i2c-\d+|I²C|I2C)\s*:.*?"
    r"(?P<kind>Address|Data) (?P<rw>read|write): (?P<val>[0-9A-Fa-f]{2})\s*\"?\s*$"
)


@dataclass(slots=True)
class I2cTransfers:
    """Address and data bytes -> register accesses, the TPM_LOC_SEL locality kept."""

    locality: int = 0
    pointer: int | None = None  # the register the last lone write selected
    _read: bool = False
    _data: bytearray = field(default_factory=bytearray)
    _ts: float = 0.0
    _where: str = ""
    _open: bool = False

    def address(self, read: bool, ts: float, where: str) -> Access | BusWarning | None:
        out = self.end()
        self._open, self._read, self._data, self._ts, self._where = (
            True,
            read,
            bytearray(),
            ts,
            where,
        )
        return out

    def data(self, byte: int, ts: float, where: str) -> BusWarning | None:
        if not self._open:
            return BusWarning(ts, where, "I2C data byte outside a transfer")
        self._data.append(byte)
        return None

    def end(self) -> Access | BusWarning | None:
        """The transfer that was open, as an access (STOP, new START, or end of input)."""
        if not self._open:
            return None
        self._open = False
        data = bytes(self._data)
        if self._read:
            if self.pointer is None:
                return BusWarning(self._ts, self._where, "I2C read with no register selected")
            return Access(self._ts, False, self.locality, self.pointer, data, self._where)
        if not data:
            return None
        reg, rest = data[0], data[1:]
        self.pointer = reg
        if not rest:
            return None  # selects the register for the read that follows
        if reg == REG_LOC_SEL:
            self.locality = rest[0] & 0xF
        return Access(self._ts, True, self.locality, reg, rest, self._where)


def i2c_annotations(lines: Iterable[str]) -> Iterator[Access | BusWarning]:
    x = I2cTransfers()
    for no, line in enumerate(lines, 1):
        m = _ANN.match(line.rstrip("\r\n"))
        if m:
            where = f"line {no}" + (f", sample {m.group('ss')}" if m.group("ss") else "")
            if m.group("kind") == "Address":
                got = x.address(m.group("rw") == "read", 0.0, where)
            else:
                got = x.data(int(m.group("val"), 16), 0.0, where)
            if got is not None:
                yield got
        elif re.search(r"(?:i2c-\d+|I²C|I2C)\s*:.*\bStop\b", line):
            got = x.end()
            if got is not None:
                yield got
    got = x.end()
    if got is not None:
        yield got


def i2c_annotation_file(path: str) -> Iterator[Access | BusWarning]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from i2c_annotations(fh)


def saleae_i2c(path: str) -> Iterator[Access | BusWarning]:
    from .exports import _seconds

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.DictReader(fh)
        if not rows.fieldnames or not {"type", "address", "read", "data"} <= set(rows.fieldnames):
            raise InputError(f"{path}: not a Logic 2 I2C analyser export")
        x = I2cTransfers()
        for no, row in enumerate(rows, 2):
            kind = (row.get("type") or "").strip().lower()
            ts = _seconds(row.get("start_time") or "") or 0.0
            where = f"line {no}"
            got: Access | BusWarning | None = None
            if kind == "address":
                got = x.address((row.get("read") or "").strip().lower() == "true", ts, where)
            elif kind == "data":
                try:
                    got = x.data(int((row.get("data") or "").strip(), 16) & 0xFF, ts, where)
                except ValueError:
                    got = BusWarning(ts, where, "I2C data row without a byte")
            elif kind == "stop":
                got = x.end()
            if got is not None:
                yield got
        got = x.end()
        if got is not None:
            yield got
