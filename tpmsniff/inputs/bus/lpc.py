"""LPC TPM cycles as the open LPC sniffers print them (lpc_sniffer / lpc_sniffer_tpm).

Each cycle is 6 bytes: 4 address bytes, 1 data byte, 1 byte whose bits 3:0 are type and
direction (bit 1 set: write) and bits 7:4 an error code (non-zero: the sniffer lost
sync). `read_serial.py` prints them hexlified (`b'000000248002'`),
`parse.py` as `io: write 00000024:   80`; plain 12-digit hex lines are taken too.
TPM cycles (START=0101) carry a 16-bit register address, locality in bits 15:12.
LPC moves one byte per cycle and the sniffers log no time, so every access has t=0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from ...codec.tis import Access, BusWarning

_RAW = re.compile(r"^\s*(?:b')?([0-9a-fA-F]{12})'?\s*$")
_PARSED = re.compile(
    r"^\s*(io|mem|\w*)\s*:\s*(read|write)\s+([0-9a-fA-F]{1,8})\s*:\s*([0-9a-fA-F]{2})\s*$"
)


def lpc_line(line: str, where: str) -> Access | BusWarning | None:
    m = _RAW.match(line)
    if m:
        raw = bytes.fromhex(m.group(1))
        addr = int.from_bytes(raw[:4], "big")
        flags = raw[5]
        if flags >> 4:
            return BusWarning(None, where, f"sniffer error code {flags >> 4} (sync lost)")
        write, data = bool(flags & 0x2), raw[4:5]
    else:
        m = _PARSED.match(line)
        if not m:
            return None
        addr = int(m.group(3), 16)
        write, data = m.group(2) == "write", bytes.fromhex(m.group(4))
    return Access(0.0, write, (addr >> 12) & 0xF, addr & 0xFFF, data, where)


def lpc_accesses(lines: Iterable[str]) -> Iterator[Access | BusWarning]:
    for no, line in enumerate(lines, 1):
        got = lpc_line(line, f"line {no}")
        if got is not None:
            yield got


def lpc_file(path: str) -> Iterator[Access | BusWarning]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from lpc_accesses(fh)


def looks_like_lpc(lines: list[str]) -> bool:
    hits = [ln for ln in lines if ln.strip()]
    return bool(hits) and sum(bool(_RAW.match(x) or _PARSED.match(x)) for x in hits) >= max(
        1, len(hits) * 3 // 4
    )
