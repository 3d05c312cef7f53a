"""Reading tpmsniff's own captures back, for assertions: an oracle independent of the
product's TCP reassembly (tpmsniff.inputs), relying only on the capture layout
(one message per segment, docs/pcapng.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dpkt

from tpmsniff.inputs.pcapng import Packet, read_pcapng
from tpmsniff.model import CTRL_PORT, TPM_PORT


@dataclass(frozen=True, slots=True)
class Segment:
    packet: Packet
    stream: tuple[bytes, int]  # client address and port
    server_port: int
    to_server: bool
    payload: bytes


def tcp_segments(path: str) -> Iterator[Segment]:
    """TCP payload segments of a tpmsniff capture (Ethernet/IPv4), handshakes skipped."""
    for p in read_pcapng(path):
        eth = dpkt.ethernet.Ethernet(p.data)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        if not tcp.data:
            continue
        to_server = tcp.dport in (TPM_PORT, CTRL_PORT)
        client = (ip.src, tcp.sport) if to_server else (ip.dst, tcp.dport)
        server = tcp.dport if to_server else tcp.sport
        yield Segment(p, client, server, to_server, bytes(tcp.data))


def messages(path: str, port: int = TPM_PORT) -> list[tuple[bool, bytes]]:
    """(to_server, bytes) per message in capture order, MS-sim pieces joined back.

    Every client is strictly request/response, so a run of same-direction segments of
    one stream is one message.
    """
    out: list[list] = []
    last: dict[tuple[bytes, int], int] = {}
    for s in tcp_segments(path):
        if s.server_port != port:
            continue
        i = last.get(s.stream)
        if i is not None and out[i][0] == s.to_server and i == len(out) - 1:
            out[i][1] += s.payload
        else:
            out.append([s.to_server, bytearray(s.payload)])
            last[s.stream] = len(out) - 1
    return [(d, bytes(b)) for d, b in out]
