"""Command-line behaviour a user relies on: exit codes and one-line errors."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest
from conftest import ROOT, free_port, start_sniff, start_swtpm, tpmsniff_cmd

from tpmsniff import __version__
from tpmsniff.inputs.pcapng import read_pcapng

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        tpmsniff_cmd() + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def one_line_error(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_version_and_help():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"tpmsniff {__version__}"
    p = run("--help")
    assert p.returncode == 0
    for opt in (
        "--listen",
        "--upstream",
        "--listen-ctrl",
        "--upstream-ctrl",
        "--pcap",
        "--console",
        "--log-format",
        "--max-message",
        "exit codes",
    ):
        assert opt in p.stdout


def test_usage_error_exit_2():
    p = run("--listen", "x")
    assert p.returncode == 2
    assert "required" in one_line_error(p)


def test_bad_address_exit_3():
    p = run("--listen", "tcp:host:notaport", "--upstream", "/nonexistent")
    assert p.returncode == 3
    assert "--listen" in one_line_error(p)


def test_upstream_unreachable_exit_3(tmp_path):
    p = run("--listen", str(tmp_path / "l.sock"), "--upstream", str(tmp_path / "missing.sock"))
    assert p.returncode == 3
    assert "upstream" in one_line_error(p) and "missing.sock" in p.stderr
    port = free_port()
    p = run("--listen", f"127.0.0.1:{free_port()}", "--upstream", f"127.0.0.1:{port}")
    assert p.returncode == 3 and "upstream" in one_line_error(p)


def test_listen_address_in_use_exit_3(tmp_path):
    sw = start_swtpm(tmp_path, "tcp")
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            p = run("--listen", f"127.0.0.1:{port}", "--upstream", sw.data, "--listen-ctrl", "none")
        assert p.returncode == 3
        assert "address already in use" in one_line_error(p)
        plain = tmp_path / "not-a-socket"
        plain.write_text("x")
        p = run("--listen", str(plain), "--upstream", sw.data)
        assert p.returncode == 3 and "not a socket" in one_line_error(p)
    finally:
        sw.stop()


def test_capture_not_writable_exit_3(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    try:
        p = run(
            "--listen",
            str(tmp_path / "l.sock"),
            "--upstream",
            sw.data,
            "--pcap",
            str(tmp_path / "no" / "such" / "dir.pcapng"),
        )
        assert p.returncode == 3 and "capture" in one_line_error(p)
    finally:
        sw.stop()


def test_stale_socket_replaced_and_sigint_clean(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "sniff" / "sniff.sock")) if (
        tmp_path / "sniff"
    ).mkdir() is None else None
    stale.close()  # a socket file nobody listens on
    sniff = start_sniff(tmp_path, sw.data)
    try:
        assert sniff.stop(signal.SIGINT) == 0
        list(read_pcapng(str(sniff.pcap)))  # readable
    finally:
        sw.stop()
