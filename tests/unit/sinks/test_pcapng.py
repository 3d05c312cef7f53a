"""The pcapng sink writes what the reader (and tshark, in integration tests) reads back."""

from __future__ import annotations

import os
import threading

import pytest
from helpers.captured import messages

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.model import Channel, ConnInfo, Direction, Event, Framing, Message
from tpmsniff.safefile import UnsafeFile
from tpmsniff.sinks.pcapfile import PcapngWriter
from tpmsniff.sinks.pcapng import PcapngSink

CMD = bytes.fromhex("80010000000c0000017b0008")
RSP = bytes.fromhex("8001000000140000000000080102030405060708")


def test_roundtrip_with_mssim_split(tmp_path):
    path = tmp_path / "x.pcapng"
    sink = PcapngSink(str(path))
    ann = Annotator()
    sink.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 1.0))
    pre = (8).to_bytes(4, "big") + b"\x02" + len(CMD).to_bytes(4, "big")
    f1 = ann.annotate(
        1, 1.0, Event(Channel.TPM, Direction.COMMAND, Message(pre + CMD, Framing.MSSIM, 9, 2))
    )
    rsp = len(RSP).to_bytes(4, "big") + RSP + b"\0" * 4
    f2 = ann.annotate(
        1, 1.1, Event(Channel.TPM, Direction.RESPONSE, Message(rsp, Framing.MSSIM, 4))
    )
    sink.frame(f1)
    sink.frame(f2)
    sink.conn_close(1, 1.2)
    sink.close()
    assert (path.stat().st_mode & 0o777) == 0o600
    pkts = list(read_pcapng(str(path)))
    assert len(pkts) == 3 + 2 + 3 + 3  # handshake, cmd prefix+cmd, rsp prefix+rsp+trailer, FIN
    assert all(p.comment for p in pkts)
    assert "GetRandom" in pkts[4].comment and "loc=2" in pkts[4].comment
    assert messages(str(path)) == [(True, pre + CMD), (False, rsp)]


def test_capture_writer_refuses_a_symlink(tmp_path):

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "cap").symlink_to(victim)
    with pytest.raises(UnsafeFile):
        PcapngWriter(str(tmp_path / "cap"))
    with pytest.raises(UnsafeFile):
        PcapngWriter(str(tmp_path / "cap"), append=True)  # SIGHUP / ring files too
    assert victim.read_bytes() == b"precious"


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


def _frames(n):
    ann = Annotator()
    out = []
    for i in range(n):
        for d, raw in ((Direction.COMMAND, CMD), (Direction.RESPONSE, RSP)):
            out.append(ann.annotate(1, 1.0 + i, Event(Channel.TPM, d, Message(raw, Framing.RAW))))
    return out


def test_blocks_are_queued_and_one_flush_writes_them_all(tmp_path):
    """A batch of frames costs one write: nothing past the headers before flush(), every
    block (handshake and messages) after it, readable by a live reader."""
    path = tmp_path / "b.pcapng"
    sink = PcapngSink(str(path))
    head = path.stat().st_size
    for f in _frames(10):
        sink.frame(f)
    assert path.stat().st_size == head and sink._w.size > head
    sink.flush()
    assert path.stat().st_size == sink._w.size
    assert len(list(read_pcapng(str(path)))) == 3 + 20
    sink.close()
    assert len(list(read_pcapng(str(path)))) == 3 + 20 + 3  # close: the FINs, written


def test_a_full_queue_is_written_without_waiting_for_flush(tmp_path):
    from tpmsniff.sinks.pcapfile import BUFFER

    path = tmp_path / "q.pcapng"
    sink = PcapngSink(str(path))
    frames = _frames(BUFFER // 150 + 10)  # each block > 150 bytes
    for f in frames:
        sink.frame(f)
    written = path.stat().st_size
    assert written > BUFFER  # without a flush(), by whole blocks
    assert len(list(read_pcapng(str(path)))) > 100
    sink.close()


def test_a_failed_flush_loses_the_capture_loudly_and_leaves_whole_blocks(tmp_path):
    """Disk full at the batch write: exit 4 (EXIT_CAPTURE_LOST), the file keeps exactly
    the whole blocks that fit (as when every block had its own write), the sink is
    closed for good; the pipeline goes on."""
    import errno

    from tpmsniff.model.exits import EXIT_CAPTURE_LOST

    path = tmp_path / "f.pcapng"
    sink = PcapngSink(str(path))
    for f in _frames(2):
        sink.frame(f)
    sink.flush()
    good = path.stat().st_size
    for f in _frames(2):
        sink.frame(f)
    queued = sink._w.size - good
    limit = good + queued // 4 + queued // 8  # room for a block and a half of the four
    real = os.write

    def small_disk(fd, data):
        room = limit - os.fstat(fd).st_size
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data)[:room])

    os.write = small_disk
    try:
        sink.flush()
    finally:
        os.write = real
    assert sink.exit_code == EXIT_CAPTURE_LOST and sink._w is None
    pkts = list(read_pcapng(str(path)))  # no partial block: every one reads
    assert len(pkts) == 3 + 4 + 1 and good < path.stat().st_size <= limit
    sink.frame(_frames(1)[0])  # the relay goes on; the capture does not
    sink.close()
    assert len(list(read_pcapng(str(path)))) == 3 + 4 + 1


def test_cached_comments_are_one_line_of_every_frame(tmp_path):
    """The comment cache (keyed by the shared decode) answers one_line(f) for every frame
    of every recording and for repeats of one command on several connections."""
    from dataclasses import replace

    from conftest import DATA

    from tpmsniff.inputs import frames_from_input
    from tpmsniff.sinks.text import one_line

    sink = PcapngSink(str(tmp_path / "c.pcapng"))
    frames = []
    for cap in [*sorted(DATA.glob("*.pcapng")), *sorted(DATA.glob("*.swtpm.log"))]:
        frames += [f for f in frames_from_input(str(cap), Annotator()) if f is not None]
    repeats = _frames(3)
    repeats += [replace(repeats[0], conn=2), replace(repeats[0], locality=4, error="e")]
    for _ in range(2):
        for f in [*frames, *repeats]:
            assert sink._comment(f) == one_line(f)
    sink.close()
