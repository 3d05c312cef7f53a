"""Framing must give the same messages whatever the read boundaries (property tests)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.channels import DataChannel
from tpmsniff.codec.framing import RequestFramer, ResponseFramer
from tpmsniff.model import Framing

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")
STARTUP = bytes.fromhex("80010000000c000001440000")
PROBE_12 = bytes.fromhex("00c10000000a000000f1")
RSP = bytes.fromhex("8001000000140000000000080102030405060708")


def mssim(cmd: bytes, loc: int = 0) -> bytes:
    return (8).to_bytes(4, "big") + bytes([loc]) + len(cmd).to_bytes(4, "big") + cmd


def mssim_rsp(rsp: bytes) -> bytes:
    return len(rsp).to_bytes(4, "big") + rsp + b"\0\0\0\0"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


commands = st.lists(
    st.sampled_from([GETRANDOM, STARTUP, PROBE_12, mssim(GETRANDOM, 3), mssim(STARTUP, 0)]),
    min_size=1,
    max_size=8,
)


@given(commands, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
@settings(max_examples=300)
def test_requests_survive_any_fragmentation_and_coalescing(msgs, cuts):
    stream = b"".join(msgs)
    f = RequestFramer()
    out = []
    for piece in split(stream, cuts):
        out += f.feed(piece)
    assert [m.raw for m in out] == msgs
    assert f.pending == 0
    for m, raw in zip(out, msgs, strict=True):
        assert m.framing is (Framing.MSSIM if raw[:4] == b"\0\0\0\x08" else Framing.RAW)


@given(st.lists(st.booleans(), min_size=1, max_size=6), st.lists(st.integers(0, 5000), max_size=12))
@settings(max_examples=200)
def test_responses_split_by_expected_framing(kinds, cuts):
    f = ResponseFramer()
    expected = []
    for ms in kinds:
        f.expect(Framing.MSSIM if ms else Framing.RAW)
        expected.append(mssim_rsp(RSP) if ms else RSP)
    out = []
    for piece in split(b"".join(expected), cuts):
        out += f.feed(piece)
    assert [m.raw for m in out] == expected
    assert f.outstanding == 0


@given(commands, st.lists(st.integers(0, 10_000), max_size=20))
@settings(max_examples=200)
def test_data_channel_keeps_one_request_outstanding(msgs, cuts):
    ch = DataChannel()
    sent: list[bytes] = []
    for piece in split(b"".join(msgs), cuts):
        writes, _ = ch.from_client(piece)
        sent += writes
        assert len(sent) <= 1, "a second request went out before the first response"
    # answer one by one; each answer releases exactly the next request as one write
    answered = 0
    while answered < len(msgs):
        assert len(sent) == answered + 1, "exactly one request outstanding"
        rsp = mssim_rsp(RSP) if sent[-1][:4] == b"\0\0\0\x08" else RSP
        writes, _events = ch.from_server(rsp)
        sent += writes
        answered += 1
    assert sent == msgs


def test_garbage_is_released_unframed_and_bounded():
    f = RequestFramer(max_message=4096)
    out = f.feed(b"GET / HTTP/1.0\r\n\r\n")
    assert len(out) == 1 and out[0].framing is Framing.UNFRAMED
    assert f.pending == 0
    # a size field above the maximum is released at once, not buffered
    big = bytes.fromhex("80010000ffff0000017b") + b"x" * 100
    out = f.feed(big)
    assert out[0].framing is Framing.UNFRAMED and out[0].raw == big
    assert f.pending == 0


def test_size_below_header_is_unframed():
    out = RequestFramer().feed(bytes.fromhex("800100000005000000"))
    assert out and out[0].framing is Framing.UNFRAMED


def test_eof_flushes_partial_request():
    ch = DataChannel()
    assert ch.from_client(GETRANDOM[:7]) == ([], [])
    writes, events = ch.client_eof()
    assert writes == [GETRANDOM[:7]]
    assert events[0].message.framing is Framing.UNFRAMED


@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0, max_value=3000), max_size=10))
@settings(max_examples=300)
def test_any_bytes_are_released_unchanged_and_bounded(data, cuts):
    """Garbage, valid messages or a mix: nothing is lost, added or reordered, and the
    buffer never holds more than one maximal message."""
    f = RequestFramer(max_message=512)
    out = []
    for piece in split(data, cuts):
        out += f.feed(piece)
        assert f.pending <= 512 + 9
    tail = f.flush()
    if tail is not None:
        out.append(tail)
    assert b"".join(m.raw for m in out) == data
    assert all(len(m.raw) <= 512 + 9 or m.framing is Framing.UNFRAMED for m in out)
