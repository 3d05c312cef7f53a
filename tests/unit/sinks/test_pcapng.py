"""The pcapng sink writes what the reader (and tshark, in integration tests) reads back."""

from __future__ import annotations

import io

from helpers.captured import messages

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.model import Channel, ConnInfo, Direction, Event, Framing, Message
from tpmsniff.sinks.console import ConsoleSink, hexdump
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


def test_hexdump_format_matches_eve():
    line = hexdump(bytes(range(0x41, 0x41 + 18)))
    assert (
        line[0] == "00000000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  |ABCDEFGHIJKLMNOP|"
    )
    assert line[1].startswith("00000010  51 52") and line[1].endswith("|QR|")
    assert len(line[1].split("|")[0]) == len(line[0].split("|")[0])


def test_console_summary_and_plain_output():
    out = io.StringIO()
    sink = ConsoleSink("summary", out, colour=False)
    f = Annotator().annotate(
        3, 0.0, Event(Channel.TPM, Direction.COMMAND, Message(CMD, Framing.RAW))
    )
    sink.frame(f)
    assert "conn 3 cmd GetRandom" in out.getvalue()
    assert "\033[" not in out.getvalue()
