"""The dpkt private API tpmsniff relies on (pinned dpkt <1.10 in pyproject.toml). If an
upgrade changes it, offline pcapng reading would misread every packet: fix
inputs/pcapng.py before raising the pin."""

from __future__ import annotations

import struct

from dpkt import pcapng


def test_dpkt_epb_fixed_header_layout():
    """inputs/pcapng.py unpacks EPBs with dpkt's own header format, minus type/len/options."""
    hdr = pcapng.EnhancedPacketBlock.__hdr_fmt__
    assert hdr == ">IIIIIIII", hdr
    assert pcapng.EnhancedPacketBlock.__hdr_len__ == 32
    assert struct.calcsize("<" + hdr[1:-1]) == 28  # type len iface ts_hi ts_lo caplen pktlen
