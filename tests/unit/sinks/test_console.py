"""The console sink: its hexdump layout and its summary and plain output."""

from __future__ import annotations

import io

from tpmsniff.codec.annotate import Annotator
from tpmsniff.model import Channel, Direction, Event, Framing, Message
from tpmsniff.sinks.console import ConsoleSink, hexdump

CMD = bytes.fromhex("80010000000c0000017b0008")


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
