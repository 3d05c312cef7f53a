"""Which kind of input a file is, and the error for one that cannot be read at all."""

from __future__ import annotations

from .errors import InputError

__all__ = ["FORMATS", "InputError", "detect_format"]

FORMATS = (
    "auto",
    "pcapng",
    "pcap",
    "swtpm-log",
    # physical buses (inputs/bus, docs/hardware.md)
    "spi-saleae-hla",
    "spi-sigrok",
    "spi-dsview",
    "spi-logic2",
    "spi-vcd",
    "spi-sr",
    "lpc",
    "i2c-sigrok",
    "i2c-saleae",
)
PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"}


def detect_format(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if head[:4] == b"\x0a\x0d\x0d\x0a":
        return "pcapng"
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if b"SWTPM_IO_" in head or b"Ctrl Cmd:" in head:
        return "swtpm-log"
    from .bus import detect_bus  # here: the bus readers import this module

    bus = detect_bus(head)
    if bus is not None:
        return bus
    raise InputError(f"{path}: not a pcap/pcapng capture, swtpm log or TPM bus capture")
