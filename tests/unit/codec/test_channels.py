"""The data channel (codec/channels.py): the per-client bound within a read, one request
at a time after EOF, garbage released whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.channels import MAX_QUEUED_BYTES, MAX_QUEUED_REQUESTS, DataChannel
from tpmsniff.model import Framing

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


def test_unframed_garbage_is_released_whole():
    ch = DataChannel()
    writes, events = ch.from_client(b"GET / HTTP/1.0\r\n\r\n")
    assert writes == [b"GET / HTTP/1.0\r\n\r\n"]
    assert events[0].message.framing is Framing.UNFRAMED
