"""`--pcap -` and `--pcap FIFO`: the stream branch of safefile (issue 12)."""

from __future__ import annotations

import os
import threading

import pytest

from tpmsniff.safefile import UnsafeFile, is_stream, open_stream
from tpmsniff.sinks.pcapfile import PcapngWriter


def test_dash_and_fifos_are_streams_files_are_not(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo, 0o600)
    (tmp_path / "f").write_bytes(b"")
    assert is_stream("-") and is_stream(str(fifo))
    assert not is_stream(str(tmp_path / "f")) and not is_stream(str(tmp_path / "missing"))


def test_symlink_to_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo, 0o600)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    assert not is_stream(str(link))  # so the daemon treats it as a file path...
    with pytest.raises(UnsafeFile, match="symbolic link"):
        open_stream(str(link))  # ...and the stream opener never follows it


def test_writer_streams_blocks_to_a_fifo_as_they_are_made(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo, 0o600)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read(28))  # the section header block arrives before anything else

    t = threading.Thread(target=reader)
    t.start()
    w = PcapngWriter(str(fifo))
    t.join(10)
    assert got and got[0][:4] == b"\x0a\x0d\x0d\x0a"
    assert w.stream
    w.close()
