"""The pcapng reader on malformed blocks: a short EPB is skipped, an untrustworthy block
length stops reading and names the byte offset."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tpmsniff.inputs.pcapng import CaptureError, read_pcapng
from tpmsniff.sinks.pcapfile import PcapngWriter


def _pcapng_with(tmp_path: Path, extra: bytes) -> tuple[Path, int, int]:
    p = tmp_path / "w.pcapng"
    w = PcapngWriter(str(p))
    w.packet(1.0, b"\0" * 60, "one", 2)
    w.close()
    head = p.read_bytes()
    w = PcapngWriter(str(tmp_path / "x.pcapng"))
    w.packet(2.0, b"\1" * 60, "two", 2)
    w.close()
    second = (tmp_path / "x.pcapng").read_bytes()
    # the SHB and IDB of the second file are dropped: its EPB follows ours
    epb2 = second[_blocks_len(second, 2) :]
    p.write_bytes(head + extra + epb2)
    return p, len(head), len(epb2)


def _blocks_len(buf: bytes, n: int) -> int:
    off = 0
    for _ in range(n):
        off += struct.unpack_from("<I", buf, off + 4)[0]
    return off


@pytest.mark.parametrize("length", [12, 16, 20, 24])
def test_short_epb_is_skipped_and_reading_goes_on(tmp_path, length):
    short = struct.pack("<II", 6, length) + b"\0" * (length - 12) + struct.pack("<I", length)
    p, off, _ = _pcapng_with(tmp_path, short)
    got = []
    with pytest.raises(CaptureError, match=f"malformed block at byte {off}"):
        for pkt in read_pcapng(str(p)):
            got.append(pkt.data)
    assert got == [b"\0" * 60, b"\1" * 60]  # the packet after the bad block is read


def test_untrustworthy_block_length_stops_with_offset(tmp_path):
    p, off, _ = _pcapng_with(tmp_path, struct.pack("<II", 6, 13) + b"\0" * 8)
    with pytest.raises(CaptureError, match=f"truncated block at byte {off}"):
        list(read_pcapng(str(p)))
