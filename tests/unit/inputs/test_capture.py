"""Offline captures built from bytes recorded from real swtpm (tests/data): every link
layer, both pcap flavours and pcapng give back the recorded messages, through the same
channel machines as the live relay; damaged files are errors, never tracebacks. TCP
reassembly: any segmentation, order, retransmission or repacketisation gives back the
stream, also across the 2**32 sequence wrap."""

from __future__ import annotations

import itertools
import random
import struct
from pathlib import Path

import dpkt
import pytest
from conftest import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.inputs import InputError, detect_format, frames_from_input
from tpmsniff.inputs.capture import MAX_PENDING, Reassembler
from tpmsniff.inputs.swtpmlog import parse_file
from tpmsniff.model import Channel, Direction

LOG = DATA / "tpm2tools-workload.swtpm.log"
CLIENT, SERVER = (b"\x7f\x00\x00\x01", 40000), (b"\x7f\x00\x00\x02", 2321)


def recorded(n: int = 40) -> list[tuple[bool, bytes]]:
    msgs = [(m.kind == "tpm-cmd", m.data) for m in parse_file(str(LOG)) if m.kind.startswith("tpm")]
    return msgs[:n]


def tcp_packets(msgs, split: int = 0) -> list[bytes]:
    """IPv4/TCP packets of one connection with handshake; each message in one segment, or
    cut in two after `split` bytes."""
    seq = {True: 1000, False: 5000}
    out = []

    def seg(to_server: bool, payload: bytes, flags: int) -> None:
        src, dst = (CLIENT, SERVER) if to_server else (SERVER, CLIENT)
        tcp = dpkt.tcp.TCP(
            sport=src[1], dport=dst[1], seq=seq[to_server], flags=flags, data=payload
        )
        ip = dpkt.ip.IP(src=src[0], dst=dst[0], p=dpkt.ip.IP_PROTO_TCP, data=tcp)
        ip.len = len(ip)
        out.append(bytes(ip))
        seq[to_server] += len(payload) + (1 if flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN) else 0)

    seg(True, b"", dpkt.tcp.TH_SYN)
    seg(False, b"", dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK)
    for to_server, data in msgs:
        if split and len(data) > split:
            seg(to_server, data[:split], dpkt.tcp.TH_ACK)
            seg(to_server, data[split:], dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH)
        else:
            seg(to_server, data, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH)
    return out


def link(linktype: int, ip: bytes) -> bytes:
    if linktype == dpkt.pcap.DLT_EN10MB:
        return bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\0" * 6, type=0x0800, data=ip))
    if linktype == dpkt.pcap.DLT_LINUX_SLL:
        return struct.pack(">HHH8sH", 0, 772, 6, b"\0" * 8, 0x0800) + ip
    if linktype == dpkt.pcap.DLT_NULL:
        return struct.pack("<I", 2) + ip
    return ip  # raw IPv4 (101)


def write(path, linktype: int, packets: list[bytes], fmt: str = "pcap") -> str:
    with open(path, "wb") as fh:
        w = (dpkt.pcapng.Writer if fmt == "pcapng" else dpkt.pcap.Writer)(fh, linktype=linktype)
        for i, p in enumerate(packets):
            w.writepkt(link(linktype, p), ts=1700000000 + i / 1000)
    return str(path)


def tpm_messages(path: str) -> list[tuple[bool, bytes]]:
    return [
        (f.direction is Direction.COMMAND, f.raw)
        for f in frames_from_input(path)
        if f.channel is Channel.TPM
    ]


@pytest.mark.parametrize("linktype", [1, 113, 0, 101])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_every_link_layer_gives_back_the_recorded_messages(tmp_path, linktype, fmt):
    msgs = recorded()
    path = write(tmp_path / f"x.{fmt}", linktype, tcp_packets(msgs), fmt)
    assert detect_format(path) == fmt
    assert tpm_messages(path) == msgs


def test_split_segments_are_joined_into_messages(tmp_path):
    msgs = recorded()
    path = write(tmp_path / "split.pcap", 1, tcp_packets(msgs, split=7))
    assert tpm_messages(path) == msgs


def test_frames_are_decoded_and_numbered_by_packet(tmp_path):
    msgs = recorded(4)
    path = write(tmp_path / "n.pcapng", 1, tcp_packets(msgs), "pcapng")
    frames = list(frames_from_input(path))
    assert [f.seq for f in frames] == [3, 4, 5, 6]  # after SYN and SYN-ACK
    assert all(f.tpm is not None and not f.error for f in frames)


def test_truncated_pcap_keeps_what_came_before(tmp_path):
    path = write(tmp_path / "t.pcap", 1, tcp_packets(recorded()))
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 5])
    got = tpm_messages(str(cut))
    assert 0 < len(got) < len(recorded())


@pytest.mark.parametrize(
    "content", [b"", b"hello world", b"\x0a\x0d\x0d\x0a\x05\x00\x00\x00", b"\xd4\xc3\xb2\xa1"]
)
def test_unreadable_inputs_are_input_errors(tmp_path, content):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(InputError):
        list(frames_from_input(str(path)))


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="No such file"):
        list(frames_from_input(str(tmp_path / "nope.pcap")))


def test_unsupported_link_type_is_named(tmp_path):
    path = write(tmp_path / "u.pcap", 147, tcp_packets(recorded(2)))
    with pytest.raises(InputError, match="unsupported link type 147"):
        list(frames_from_input(path))


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


def _dpkt_segment(linktype, data):
    """What frames_from_capture read with dpkt before the struct fast path (reference)."""
    import dpkt

    from tpmsniff.inputs.capture import ip_packet

    try:
        ip = ip_packet(linktype, data)
    except (dpkt.dpkt.UnpackError, ValueError, IndexError, struct.error):
        return None  # frames_from_capture skips it, as it skips a frame without TCP
    if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    t = ip.data
    return ip.src, t.sport, ip.dst, t.dport, t.seq, t.flags, bytes(t.data)


def _fast_segment(linktype, data):
    import dpkt

    from tpmsniff.inputs.capture import tcp_segment

    try:
        got = tcp_segment(linktype, data)
    except (dpkt.dpkt.UnpackError, ValueError, IndexError, struct.error):
        return None
    return got if got is None else (*got[:6], bytes(got[6]))


@settings(max_examples=600)
@given(
    st.sampled_from([1, 101]),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0x1FF),
    st.binary(max_size=80),
    st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 130)),
)
def test_struct_read_of_ipv4_tcp_is_dpkts(link, src, port, seq, flags, payload, pokes, cut):
    """Our own synthetic frames, then the same with bytes overwritten anywhere (IHL, total
    length, fragment offset, protocol, data offset...) and cut short: the struct reader
    and dpkt agree on every one, down to which frames are skipped."""
    from tpmsniff.sinks.pcapfile import segment

    frame = bytearray(segment(src, b"\x7f\0\0\1", port, 2321, seq, 0, flags & 0xFF, payload))
    if link == 101:
        frame = frame[14:]
    for at, value in pokes:
        if at < len(frame):
            frame[at] = value
    data = bytes(frame if cut is None else frame[:cut])
    assert _fast_segment(link, data) == _dpkt_segment(link, data)
