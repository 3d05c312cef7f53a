"""Unit-level pieces of issue 10: the per-client bound within a read, one request at a
time after EOF, the relay's fallback when a machine raises, malformed pcapng blocks,
swtpm's `Ctrl Rsp Continued` dumps, and how exit codes combine."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.channels import MAX_QUEUED_BYTES, MAX_QUEUED_REQUESTS, DataChannel
from tpmsniff.inputs.pcapng import CaptureError, read_pcapng
from tpmsniff.inputs.swtpmlog import parse_file
from tpmsniff.model import Channel, Framing
from tpmsniff.model.exits import combine
from tpmsniff.sinks.pcapfile import PcapngWriter
from tpmsniff.transport.conn import ClientConn, ConnCounter, Passthrough

DATA = Path(__file__).resolve().parent.parent / "data"
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")
RSP = bytes.fromhex("80010000001000000000000412345678")


def test_one_huge_read_is_framed_lazily_and_bounded():
    ch = DataChannel()
    writes, events = ch.from_client(GETRANDOM * 5000)  # one 60 KB read
    assert writes == [GETRANDOM] and len(events) == 1  # only the first goes
    assert ch.backlog == MAX_QUEUED_REQUESTS and ch.full
    assert ch.buffered == len(GETRANDOM) * 4999 < MAX_QUEUED_BYTES + len(GETRANDOM)
    sent = 1
    while sent < 5000:  # each response releases exactly the next request
        writes, _ = ch.from_server(RSP)
        assert writes == [GETRANDOM]
        sent += 1
    writes, events = ch.from_server(RSP)  # the last response: nothing left to send
    assert writes == [] and len(events) == 1
    assert ch.backlog == 0 and ch.buffered == 0 and ch.hungry


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
    st.integers(1, 30),
)
def test_after_eof_requests_go_one_at_a_time(cuts, n):
    """Whatever the reads, after EOF each request is its own write, each only after the
    previous response, and `done` only when all were answered."""
    stream = GETRANDOM * n
    ch = DataChannel()
    writes: list[bytes] = []
    pos = 0
    for c in cuts:
        w, _ = ch.from_client(stream[pos : pos + c])
        writes += w
        pos += c
    if pos < len(stream):
        w, _ = ch.from_client(stream[pos:])
        writes += w
    w, _ = ch.client_eof()
    writes += w
    while not ch.done:
        assert len(writes) <= n
        w, _ = ch.from_server(RSP)
        writes += w
    assert writes == [GETRANDOM] * n


class _Sink:
    pressure_listeners: list = []
    congested = False

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def conn_open(self, info) -> None:
        if self.fail:
            raise RuntimeError("sink bug")

    def events(self, conn, ts, events, number=None) -> None:
        raise RuntimeError("encoder bug")

    def conn_close(self, conn, ts) -> None:
        if self.fail:
            raise RuntimeError("sink bug")


class _Boom(DataChannel):
    def from_client(self, data: bytes):
        raise ValueError("framer bug")


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str):
        return None


class _Relay:
    def __init__(self) -> None:
        self.pipeline = _Sink(fail=True)
        self.counter = ConnCounter()
        self.clients: set = set()
        self.listen = type("L", (), {"path": "x"})()
        self.upstream = "up"

    def machine(self):
        return _Boom()

    def admit(self, conn) -> bool:
        return True

    async def connect_upstream(self, factory):
        proto = factory()
        t = _Transport()
        proto.connection_made(t)
        return t, proto


def test_machine_or_pipeline_that_raises_never_reaches_the_relay():
    async def run() -> tuple[list[bytes], ClientConn]:
        relay = _Relay()
        c = ClientConn(relay)
        c.connection_made(_Transport())
        await c._connecting
        c.data_received(GETRANDOM)  # the machine raises: bytes still go, unchanged
        c.data_received(b"more")
        assert c.up is not None and c.up.transport is not None
        return c.up.transport.out, c

    out, c = asyncio.run(run())
    assert out == [GETRANDOM, b"more"]
    assert isinstance(c.sm, Passthrough) and c.sm.channel is Channel.TPM


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


def test_ctrl_rsp_continued_is_one_reply_with_its_body():
    msgs = [m for m in parse_file(str(DATA / "stateblob.swtpm.log")) if m.kind == "ctrl-rsp"]
    blobs = [m for m in msgs if len(m.data) > 16]
    assert len(msgs) == 4 and len(blobs) == 2  # no duplicated replies
    for m in blobs:
        blob_len = int.from_bytes(m.data[12:16], "big")
        assert m.length == 16 + blob_len and len(m.data) == 16 + 1024  # swtpm cut the dump
        assert m.data[16:18] == b"\x02\x01"  # the blob's own header follows the reply's


def test_exit_codes_combine():
    assert combine() == 0 and combine(0, 0) == 0
    assert combine(0, 4) == 4 and combine(4, 1) == 1 and combine(1, 0) == 1
    assert combine(-9) == 4 and combine(247) == 4 and combine(3) == 4


def test_unframed_garbage_is_released_whole():
    ch = DataChannel()
    writes, events = ch.from_client(b"GET / HTTP/1.0\r\n\r\n")
    assert writes == [b"GET / HTTP/1.0\r\n\r\n"]
    assert events[0].message.framing is Framing.UNFRAMED


def test_capture_writer_refuses_a_symlink(tmp_path):
    from tpmsniff.safefile import UnsafeFile

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "cap").symlink_to(victim)
    with pytest.raises(UnsafeFile):
        PcapngWriter(str(tmp_path / "cap"))
    with pytest.raises(UnsafeFile):
        PcapngWriter(str(tmp_path / "cap"), append=True)  # SIGHUP / ring files too
    assert victim.read_bytes() == b"precious"
