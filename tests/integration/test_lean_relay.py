"""The relay process imports only what relaying needs (start-up, issue 13): decoding
(tpm2-pytss), the sinks (dpkt) and the checker (cryptography) live in the capture worker,
which imports them after it forks. A correctness test, not a timing test."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, start_sniff, start_swtpm, wait_for

HEAVY = ("tpm2_pytss", "dpkt", "cryptography")
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


def test_relay_modules_do_not_import_the_decoder():
    code = (
        "import sys\n"
        "from tpmsniff.cli import daemon\n"
        "args = daemon.build_parser().parse_args("
        "['--listen', 'x', '--upstream', 'y', '--pcap', 'p', '--jsonl', 'j'])\n"
        "import tpmsniff.transport.relay, tpmsniff.transport.qemu, tpmsniff.pipeline.worker\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_live_relay_process_never_loads_the_decoder(tmp_path):
    """Relay a command through a real daemon (pcapng + console on): the worker has loaded
    tpm2-pytss's native library, the relay process has not."""
    sw = start_swtpm(tmp_path, "unix")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "summary"])
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sniff.listen)
            s.sendall(GETRANDOM)
            assert len(s.recv(4096)) >= 10
        wait_for(
            lambda: sniff.pcap.stat().st_size > 0 and "GetRandom" in sniff.console(),
            what="the worker decoded",
        )
        kids = Path(f"/proc/{sniff.proc.pid}/task/{sniff.proc.pid}/children").read_text().split()
        assert len(kids) == 1
        assert "tpm2_pytss" in _maps(int(kids[0]))
        assert "tpm2_pytss" not in _maps(sniff.proc.pid)
        assert "cryptography" not in _maps(sniff.proc.pid)
    finally:
        assert sniff.stop() == 0
        sw.stop()


def _without_native(args: list[str]) -> list[str]:
    """tpmsniff as if the native relay had not been built."""
    code = (
        "import sys; sys.modules['tpmsniff._native._relay'] = None\n"
        "from tpmsniff.cli import main\n"
        f"raise SystemExit(main({args!r}))\n"
    )
    return [sys.executable, "-c", code]


def test_native_relay_not_built_one_line_error_or_python_fallback(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    try:
        listen = str(tmp_path / "l.sock")
        base = ["--listen", listen, "--upstream", sw.data, "--listen-ctrl", "none"]
        p = subprocess.run(
            _without_native([*base, "--relay", "native", "--console", "none"]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 3
        lines = p.stderr.strip().splitlines()
        assert lines[-1].startswith("tpmsniff: error: native relay not built")
        assert "Traceback" not in p.stderr
        # auto: relays in Python, and says so
        proc = subprocess.Popen(
            _without_native(
                [*base, "--relay", "auto", "--console", "none", "--log-format", "json"]
            ),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: Path(listen).exists(), 20, "listening")
            wait_for(lambda: _answers(listen), 20, "relaying")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "relaying in Python: native relay unavailable" in err
    finally:
        sw.stop()


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
        s.sendall(GETRANDOM)
        return s.recv(4096)[6:10] == b"\0\0\0\0"
