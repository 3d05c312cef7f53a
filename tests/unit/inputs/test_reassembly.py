"""TCP reassembly of offline captures: any segmentation, order, retransmission or
repacketisation gives back the stream, also across the 2**32 sequence wrap."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.inputs.capture import MAX_PENDING, Reassembler


def segments(data: bytes, isn: int, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [((isn + a) & 0xFFFFFFFF, data[a:b]) for a, b in itertools.pairwise(points)]


@given(
    st.binary(min_size=1, max_size=2000),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    st.randoms(use_true_random=False),
)
@settings(max_examples=400)
def test_stream_survives_reordering_and_repacketised_retransmission(data, isn, cuts, recuts, rnd):
    first = segments(data, isn, cuts)
    again = rnd.sample(segments(data, isn, recuts), k=len(segments(data, isn, recuts)) // 2)
    order = first + again
    rnd.shuffle(order)
    # the very first segment seen fixes where the stream starts, as the SYN would
    order.remove(first[0])
    order.insert(0, first[0])
    r = Reassembler()
    out = b"".join(r.feed(seq, payload, False) for seq, payload in order)
    assert out == data
    assert r.pending == {} and r.held == 0


def test_syn_and_fin_take_one_sequence_number_and_retransmitted_syn_is_ignored():
    r = Reassembler()
    isn = 0xFFFFFFFF  # wraps right after the SYN
    assert r.feed(isn, b"", True) == b""
    assert r.feed(isn, b"", True) == b""  # retransmitted SYN: no byte of data skipped
    assert r.feed(0, b"abc", False) == b"abc"
    assert r.feed(3, b"def", True) == b"def"  # data with FIN
    assert r.feed(3, b"def", True) == b""  # retransmitted
    assert r.next_seq == 7


def test_a_gap_that_never_fills_is_given_up_and_counted():
    r = Reassembler()
    r.feed(0, b"a", False)
    chunk = b"x" * 65536
    out = b""
    seq = 100
    while r.gaps == 0:
        out += r.feed(seq, chunk, False)
        seq += len(chunk)
        assert r.held <= MAX_PENDING + len(chunk)
    assert r.gaps == 1 and out.startswith(chunk)


def test_seeded_shuffles_of_a_real_sized_stream():
    rnd = random.Random(7)
    data = bytes(rnd.getrandbits(8) for _ in range(20000))
    for _ in range(20):
        cuts = [rnd.randrange(len(data)) for _ in range(60)]
        segs = segments(data, rnd.getrandbits(32), cuts)
        head, rest = segs[0], segs[1:]
        rnd.shuffle(rest)
        r = Reassembler()
        out = r.feed(*head, False) + b"".join(r.feed(s, p, False) for s, p in rest)
        assert out == data
