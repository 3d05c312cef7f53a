"""Captures of physical TPM buses (SPI, LPC, I2C) from logic analysers and sniffers.

Every format becomes register accesses (`codec.tis.Access`), the one FIFO assembler
makes TPM messages of them, and those are annotated like relayed traffic. Connection
`locality + 1` carries each locality, so the pcapng writer gives each its own stream.
Anything the assembler or a parser could not make sense of is a `BusWarning`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace

from ...codec.annotate import Annotator
from ...codec.tis import Access, BusMessage, BusWarning, TisAssembler
from ...model import Channel, Event, Frame, Framing, Message
from . import exports, i2c, lpc, signals
from .spi import SpiFrame, frame_access

Source = Iterator[Access | BusWarning | SpiFrame]

READERS: dict[str, Callable[[str], Iterator[Access | BusWarning | SpiFrame]]] = {
    "spi-saleae-hla": exports.saleae_hla,
    "spi-sigrok": exports.spi_tpm_file,
    "spi-dsview": exports.dsview_csv,
    "spi-logic2": signals.logic2_frames,
    "spi-vcd": signals.vcd_file_frames,
    "spi-sr": signals.sr_frames,
    "lpc": lpc.lpc_file,
    "i2c-sigrok": i2c.i2c_annotation_file,
    "i2c-saleae": i2c.saleae_i2c,
}
BUS_FORMATS = tuple(READERS)
MAX_WARNINGS = 1000  # kept per input; the rest are counted


def detect_bus(head: bytes) -> str | None:
    """The bus format of a file whose first 64 KiB are `head`, or None."""
    if head[:2] == b"PK" and b"metadata" in head[:4096]:
        return "spi-sr"  # a sigrok session: a zip with a `metadata` member
    text = head.decode("utf-8", errors="replace")
    lines = text.splitlines()[:200]
    first = lines[0].strip().lower() if lines else ""
    if "$enddefinitions" in text or first.startswith(("$date", "$timescale", "$version")):
        return "spi-vcd"
    cols = {c.strip().strip('"') for c in first.split(",")}
    if {"type", "start_time", "addr", "data"} <= cols:
        return "spi-saleae-hla"
    if {"type", "start_time", "address", "read", "data"} <= cols:
        return "i2c-saleae"
    if first.startswith("time [s]") or first.startswith("time[s]"):
        return "spi-logic2"
    if first.startswith("id,time[") and "tpm" in first:
        return "spi-dsview"
    if any(re.search(r"(?:spi_tpm-\d+|SPI TPM)\s*:", ln) for ln in lines):
        return "spi-sigrok"
    if any(
        re.search(r"(?:i2c-\d+|I²C|I2C)\s*:.*(?:Address|Data) (?:read|write):", ln) for ln in lines
    ):
        return "i2c-sigrok"
    if lpc.looks_like_lpc(lines):
        return "lpc"
    return None


def _accesses(src: Source) -> Iterator[Access | BusWarning]:
    for x in src:
        yield frame_access(x) if isinstance(x, SpiFrame) else x


def bus_frames(path: str, fmt: str, ann: Annotator, warnings: list[BusWarning]) -> Iterator[Frame]:
    """Annotated frames of a bus capture; every anomaly is appended to `warnings` (at most
    MAX_WARNINGS, then one that counts the rest). Raises InputError (from the reader) for
    a file that is not of the format at all."""
    tis = TisAssembler()
    number = 0
    dropped = 0

    def warn(w: BusWarning) -> None:
        nonlocal dropped
        if len(warnings) < MAX_WARNINGS:
            warnings.append(w)
        else:
            dropped += 1

    for x in _accesses(READERS[fmt](path)):
        if isinstance(x, BusWarning):
            warn(x)
            continue
        for out in tis.feed(x):
            if isinstance(out, BusWarning):
                warn(out)
            else:
                number += 1
                yield _frame(ann, out, number)
    for w in tis.finish():
        warn(w)
    if dropped:
        warnings.append(BusWarning(None, "", f"{dropped} more warning(s) not shown"))


def _frame(ann: Annotator, m: BusMessage, number: int) -> Frame:
    ev = Event(Channel.TPM, m.direction, Message(m.raw, Framing.RAW, locality=m.locality))
    f = ann.annotate(m.locality + 1, m.ts, ev, number)
    return f if f.locality == m.locality else replace(f, locality=m.locality)


__all__ = ["BUS_FORMATS", "READERS", "bus_frames", "detect_bus"]
