"""The sink registry: each sink class declares, checks and builds its own options, and
declaring them loads nothing heavy (the relay process parses the daemon's options)."""

from __future__ import annotations

import io
import subprocess
import sys

import dpkt
import pytest

from tpmsniff.cli import decode
from tpmsniff.cli.args import build_sinks, check_sink_options, sink_context
from tpmsniff.cli.daemon import build_parser
from tpmsniff.sinks import pcapng
from tpmsniff.sinks.base import OptionError
from tpmsniff.sinks.check import CheckSink
from tpmsniff.sinks.console import ConsoleSink
from tpmsniff.sinks.jsonl import JsonlSink
from tpmsniff.sinks.pcapng import PcapngSink
from tpmsniff.sinks.registry import SINKS
from tpmsniff.sinks.tee import TeeSink


def test_declaring_options_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from tpmsniff.sinks.registry import SINKS\n"
        "from tpmsniff.cli.daemon import build_parser\n"
        "build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'dpkt', 'tpm2_pytss', 'cryptography'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_tcp_flags_are_dpkts():
    tcp = dpkt.tcp
    assert (pcapng.TH_FIN, pcapng.TH_SYN, pcapng.TH_PSH, pcapng.TH_ACK) == (
        tcp.TH_FIN,
        tcp.TH_SYN,
        tcp.TH_PUSH,
        tcp.TH_ACK,
    )


def test_every_sink_builds_itself_from_the_daemon_options(tmp_path):
    files = ["--pcap", str(tmp_path / "c.pcapng"), "--jsonl", str(tmp_path / "c.jsonl")]
    args = build_parser().parse_args(
        ["--listen", "x", "--upstream", "y", "--console", "summary", *files, "--secret", "s"]
    )
    check_sink_options(args, live=True)
    out, err = io.StringIO(), io.StringIO()
    sinks = build_sinks(args, sink_context(args, True, out, err))
    try:
        assert [type(s) for s in sinks] == [ConsoleSink, PcapngSink, JsonlSink, CheckSink]
        assert sinks[0].out is out and sinks[3].out is out  # alerts where the console prints
    finally:
        for s in sinks:
            s.close()
    assert list(SINKS) == [ConsoleSink, PcapngSink, TeeSink, JsonlSink, CheckSink]


def test_pcap_to_stdout_sends_text_to_stderr():
    args = build_parser().parse_args(["--listen", "x", "--upstream", "y", "--pcap", "-"])
    out, err = io.StringIO(), io.StringIO()
    assert sink_context(args, True, out, err).text is err


def test_a_sink_refuses_options_that_cannot_work(tmp_path):
    args = build_parser().parse_args(["--listen", "x", "--upstream", "y", "--pcap-rotate", "1"])
    with pytest.raises(OptionError, match="--pcap-rotate needs --pcap"):
        check_sink_options(args, live=True)


def test_decode_output_picks_one_stdout_sink():
    args = decode.build_parser().parse_args(["in.pcapng", "--output", "jsonl"])
    out = io.StringIO()
    sinks = build_sinks(args, sink_context(args, False, out, io.StringIO()))
    assert [type(s) for s in sinks] == [JsonlSink]
    args = decode.build_parser().parse_args(["in.pcapng", "--output", "console"])
    (console,) = build_sinks(args, sink_context(args, False, out, io.StringIO()))
    assert isinstance(console, ConsoleSink) and console.mode == "hexdump"
