"""The struct-packed hot path of sinks/pcapfile.py against dpkt: every byte of the frame
(Ethernet, IPv4 with its checksum, TCP with seq/ack/flags/window/checksum, payload) and of
the Enhanced Packet Block (timestamps, lengths, padding, comment, flags), for any input."""

from __future__ import annotations

import struct

import dpkt
from dpkt import pcapng
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.sinks.pcapfile import EPB_FLAGS, epb, segment

ips = st.binary(min_size=4, max_size=4).map(lambda b: b"\x7f" + b[1:])
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
tcp_flags = st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11])


def dpkt_segment(src, dst, sport, dport, seq, ack, flags, payload=b""):
    """What pcapfile.segment built before it was packed by hand (the reference)."""
    tcp = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=65535, data=payload
    )
    ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, ttl=64, df=1, data=tcp)
    ip.len = 20 + len(tcp)
    eth = dpkt.ethernet.Ethernet(
        src=b"\x00" * 6, dst=b"\x00" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)


def dpkt_epb(ts, data, comment, flags):
    us = round(ts * 1e6)
    return bytes(
        pcapng.EnhancedPacketBlockLE(
            ts_high=us >> 32,
            ts_low=us & 0xFFFFFFFF,
            pkt_data=data,
            opts=[
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=comment),
                pcapng.PcapngOptionLE(code=EPB_FLAGS, data=struct.pack("<I", flags)),
                pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT),
            ],
        )
    )


@settings(max_examples=400)
@given(ips, ips, u16, u16, u32, u32, tcp_flags, st.binary(max_size=300))
def test_segment_is_dpkts_byte_for_byte(src, dst, sport, dport, seq, ack, flags, payload):
    ours = segment(src, dst, sport, dport, seq, ack, flags, payload)
    assert ours == dpkt_segment(src, dst, sport, dport, seq, ack, flags, payload)
    # and dpkt reads every field back, both checksums verified
    eth = dpkt.ethernet.Ethernet(ours)
    ip = eth.data
    tcp = ip.data
    assert (eth.src, eth.dst, eth.type) == (b"\0" * 6, b"\0" * 6, dpkt.ethernet.ETH_TYPE_IP)
    assert (ip.src, ip.dst, ip.ttl, ip.df, ip.p, ip.len) == (src, dst, 64, 1, 6, 40 + len(payload))
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win, tcp.opts) == (
        sport,
        dport,
        seq,
        ack,
        flags,
        65535,
        b"",
    )
    assert tcp.data == payload
    assert dpkt.in_cksum(ours[14:34]) == 0
    pseudo = src + dst + struct.pack("!BBH", 0, 6, 20 + len(payload))
    assert dpkt.in_cksum(pseudo + ours[34:]) == 0


@settings(max_examples=200)
@given(st.binary(max_size=2000), u16, u16, u32, u32)
def test_segment_checksums_on_long_payloads(payload, sport, dport, seq, ack):
    src, dst = b"\x7f\x00\x00\x01", b"\x7f\x00\x01\x02"
    assert segment(src, dst, sport, dport, seq, ack, 0x18, payload) == dpkt_segment(
        src, dst, sport, dport, seq, ack, 0x18, payload
    )


def test_checksum_edge_sums():
    """Payloads chosen so a checksum sum is 0 (mod 0xFFFF): the one's-complement corner."""
    src, dst = b"\x7f\x00\x00\x01", b"\x7f\x00\xc3\x50"
    base = segment(src, dst, 50000, 2321, 1, 2, 0x18, b"\0\0")
    want = int.from_bytes(base[50:52], "big")  # the TCP checksum with a zero word
    for word in (want, (want + 1) & 0xFFFF, 0xFFFF - want, 0, 0xFFFF):
        payload = word.to_bytes(2, "big")
        assert segment(src, dst, 50000, 2321, 1, 2, 0x18, payload) == dpkt_segment(
            src, dst, 50000, 2321, 1, 2, 0x18, payload
        )


@settings(max_examples=400)
@given(
    st.floats(0, 4e9, allow_nan=False),
    st.binary(max_size=200),
    st.text(max_size=120),
    st.sampled_from([1, 2, 3, 0xFFFFFFFF]),
)
def test_epb_is_dpkts_byte_for_byte(ts, data, comment, flags):
    ours = epb(ts, data, comment, flags)
    assert ours == dpkt_epb(ts, data, comment, flags)
    block = pcapng.EnhancedPacketBlockLE(ours)
    us = round(ts * 1e6)
    assert (block.ts_high, block.ts_low, block.caplen, block.pkt_len) == (
        us >> 32,
        us & 0xFFFFFFFF,
        len(data),
        len(data),
    )
    assert block.pkt_data == data and block.len == len(ours) % (1 << 32)
    assert block.opts[0].text == comment
    assert struct.unpack("<I", block.opts[1].data) == (flags,)
