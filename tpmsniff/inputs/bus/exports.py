"""Register transactions that logic-analyser software already decoded, as it exports them.

- Saleae Logic 2, "TPM SPI Transaction" high-level analyser (bitlocker-spi-toolkit):
  Data table > Export Table (CSV): `name,type,start_time,duration,"register","addr",
  "data","waits"`; rows of type `read`/`write`, `addr` the 24-bit address in hex.
- sigrok `spi_tpm` (libsigrokdecoder_spi-tpm) annotations, as `sigrok-cli -A spi_tpm`
  prints them or PulseView exports them: per transaction `Read`/`Write`, then the
  register (`Register: TPM_STS_0`), then the data in hex (`... (Waits: 2)`).
- DSView, the same decoder's annotations, "Export" of the decoder table as CSV:
  `Id,Time[ns],SPI TPM: TPM transactions`.

The two spi_tpm exports name the register, not its address: `TPM_<reg>_<locality>` is
mapped back to the register offset (a read of STS's burst-count bytes alone cannot be
told from one of STS; drivers read STS whole).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from datetime import datetime

from ...codec.tis import Access, BusWarning
from ..errors import InputError
from .spi import address_access

REGISTERS = {
    "TPM_ACCESS": 0x00,
    "TPM_INT_ENABLE": 0x08,
    "TPM_INT_VECTOR": 0x0C,
    "TPM_INT_STATUS": 0x10,
    "TPM_INTF_CAPABILITY": 0x14,
    "TPM_STS": 0x18,
    "TPM_DATA_FIFO": 0x24,
    "TPM_INTERFACE_ID": 0x30,
    "TPM_XDATA_FIFO": 0x80,
    "TPM_DID_VID": 0xF00,
    "TPM_RID": 0xF04,
}
_REGNAME = re.compile(r"(TPM_[A-Z_]+?)_(\d)")
_HEXDATA = re.compile(r"[0-9a-fA-F]{2}(?:\s?[0-9a-fA-F]{2})*")
_WAITS = re.compile(r"\s*\(Waits?:\s*\d+\)\s*$")


def _seconds(text: str) -> float | None:
    """Logic 2 writes seconds since capture start, or an ISO 8601 time of day."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"(.*T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)?", text)
    if not m:
        return None
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    try:
        dt = datetime.fromisoformat(
            f"{m.group(1)}.{frac}{(m.group(3) or '').replace('Z', '+00:00')}"
        )
    except ValueError:
        return None
    extra = int((m.group(2) or "0")[6:9].ljust(3, "0")) * 1e-9
    return dt.timestamp() + extra


# -- Saleae Logic 2 TPM SPI Transaction HLA ------------------------------------------
def saleae_hla(path: str) -> Iterator[Access | BusWarning]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.DictReader(fh)
        need = {"type", "start_time", "addr", "data"}
        if not rows.fieldnames or not need <= {f.strip() for f in rows.fieldnames}:
            raise InputError(f"{path}: not a TPM SPI Transaction export (columns: {sorted(need)})")
        for no, row in enumerate(rows, 2):
            kind = (row.get("type") or "").strip().lower()
            if kind not in ("read", "write"):
                continue  # the SPI analyser's own rows, if exported with it
            where = f"line {no}"
            ts = _seconds(row.get("start_time") or "")
            try:
                addr = int((row.get("addr") or "").strip(), 16)
                data = bytes.fromhex((row.get("data") or "").strip())
            except ValueError:
                yield BusWarning(ts, where, "row with an unreadable addr or data")
                continue
            yield address_access(ts or 0.0, kind == "write", addr, data, where)


# -- sigrok spi_tpm annotations (sigrok-cli, PulseView, DSView) -----------------------
class _SpiTpmTokens:
    """Read/Write, register, data: three annotations make one transaction."""

    def __init__(self) -> None:
        self.op: bool | None = None  # True: write
        self.reg: tuple[int, int] | None = None
        self.ts = 0.0
        self.where = ""

    def feed(self, text: str, ts: float, where: str) -> Access | BusWarning | None:
        text = _WAITS.sub("", text.strip().strip('"').strip())
        word = text.rsplit(":", 1)[-1].strip()  # `Register: TPM_STS_0`, `Data: 00ff`...
        if word in ("Read", "Rd", "Write", "Wr"):
            stray = self._stray()
            self.op, self.reg, self.ts, self.where = word in ("Write", "Wr"), None, ts, where
            return stray
        m = _REGNAME.fullmatch(word)
        if m or word in ("Unknown", "Reserved", "TPM_HASH_END", "TPM_HASH_START"):
            if self.op is None:
                return BusWarning(ts, where, f"register {word} without Read/Write before it")
            if m and m.group(1) in REGISTERS:
                self.reg = (int(m.group(2)), REGISTERS[m.group(1)])
            else:
                self.reg = (-1, -1)
            return None
        if _HEXDATA.fullmatch(word):
            if self.op is None or self.reg is None:
                self.op = None
                return BusWarning(ts, where, "data without Read/Write and register before it")
            op, (loc, reg) = self.op, self.reg
            self.op = self.reg = None
            if loc < 0:
                return BusWarning(self.ts, self.where, "transaction on a reserved register")
            data = bytes.fromhex(word.replace(" ", ""))
            return Access(self.ts, op, loc, reg, data, self.where)
        return None  # another annotation (e.g. the decoder's VMK row): not a transaction

    def _stray(self) -> BusWarning | None:
        if self.op is None:
            return None
        return BusWarning(self.ts, self.where, "transaction without its data")

    def finish(self) -> BusWarning | None:
        return self._stray()


# `12345-12400 spi_tpm-1: Read`, `... SPI TPM: TPM transactions: Read`, PulseView's
# `0.001234 s-0.00125 s SPI TPM: Read: "Read" "Rd"`
_ANN = re.compile(
    r"^\s*(?:(?P<ss>[\d.]+)\s*(?P<unit>[munpf]?s)?\s*(?:-\s*[\d.]+\s*(?:[munpf]?s)?)?\s+)?"
    r"(?:spi_tpm-\d+|SPI TPM)\s*:\s*(?:(?:TPM transactions|Transactions)\s*:\s*)?(?P<text>.*)$"
)
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}


def spi_tpm_annotations(lines: Iterable[str]) -> Iterator[Access | BusWarning]:
    tok = _SpiTpmTokens()
    for no, line in enumerate(lines, 1):
        m = _ANN.match(line.rstrip("\r\n"))
        if not m:
            continue
        ts = 0.0
        where = f"line {no}"
        if m.group("ss"):
            if m.group("unit"):
                ts = float(m.group("ss")) * _UNIT[m.group("unit")]
            else:
                where += f", sample {m.group('ss')}"
        text = m.group("text")
        q = re.findall(r'"([^"]*)"', text)
        if q:  # PulseView %q: every text of the annotation, longest first
            text = q[0]
        got = tok.feed(text, ts, where)
        if got is not None:
            yield got
    end = tok.finish()
    if end is not None:
        yield end


def spi_tpm_file(path: str) -> Iterator[Access | BusWarning]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from spi_tpm_annotations(fh)


def dsview_csv(path: str) -> Iterator[Access | BusWarning]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh)
        head = next(rows, None)
        if not head or len(head) < 3 or not head[1].strip().lower().startswith("time"):
            raise InputError(f"{path}: not a DSView decoder export (Id,Time[ns],...)")
        scale = _UNIT.get(re.sub(r".*\[(\w+)\].*", r"\1", head[1].strip()), 1e-9)
        tok = _SpiTpmTokens()
        for no, row in enumerate(rows, 2):
            if len(row) < 3:
                continue
            try:
                ts = float(row[1]) * scale
            except ValueError:
                ts = 0.0
            got = tok.feed(row[2], ts, f"line {no}")
            if got is not None:
                yield got
        end = tok.finish()
        if end is not None:
            yield end
