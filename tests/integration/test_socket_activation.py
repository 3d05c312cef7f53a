"""systemd socket activation (issue 19, item 4), the way systemd-socket-activate does it:
it listens, and on the first connection execs tpmsniff with the listening sockets as fds
3.. (LISTEN_FDS). So the first client connects and sends before tpmsniff even runs, and
must still be served; tpm2-tools then relay through the passed sockets with no --listen,
and the capture equals swtpm's own log."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, free_port, recv_exact, require, start_swtpm, tpmsniff_cmd, wait_for
from helpers.captured import messages
from helpers.groundtruth import log_sequence
from helpers.workload import SECRET, tpm2tools_workload

from tpmsniff.model import CTRL_PORT

pytestmark = pytest.mark.integration

GET_RANDOM = struct.pack(">HIIH", 0x8001, 12, 0x17B, 8)


def activate(tmp: Path, listens: list[str], upstream: str, *extra: str) -> subprocess.Popen:
    """systemd-socket-activate -l ... tpmsniff --upstream ... (no --listen)."""
    exe = require("systemd-socket-activate")
    args = [exe, *(f"-l{x}" for x in listens), *extra, *tpmsniff_cmd()]
    args += ["--upstream", upstream, "--pcap", str(tmp / "cap.pcapng")]
    args += ["--log-format", "json", "--console", "none"]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "err.txt").open("w")
    )
    err = tmp / "err.txt"  # "Listening on ADDR as FD." once per socket, then it polls
    wait_for(lambda: err.read_text().count("Listening on") == len(listens), 10, "listening")
    return proc


def ready(tmp: Path, proc: subprocess.Popen) -> None:
    err = tmp / "err.txt"
    wait_for(lambda: proc.poll() is not None or '"ready"' in err.read_text(), 30, "ready")
    assert proc.poll() is None, err.read_text()


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()  # systemd-socket-activate execs tpmsniff: the same process
    return proc.wait(15)


def get_random(addr: tuple[str, int] | str) -> bytes:
    fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(addr)
        s.sendall(GET_RANDOM)
        head = recv_exact(s, 10)
        return head + recv_exact(s, struct.unpack(">I", head[2:6])[0] - 10)


def test_tcp_first_client_served_then_tpm2_tools(tmp_path):
    tpm = start_swtpm(tmp_path, "tcp")
    port = free_port(pair=True)
    proc = activate(tmp_path, [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"], tpm.data)
    try:
        # connects and sends before tpmsniff runs: its exec is triggered by this connection
        rsp = get_random(("127.0.0.1", port))
        assert rsp[:10] == struct.pack(">HII", 0x8001, 20, 0) and len(rsp) == 20
        ready(tmp_path, proc)
        out = tpm2tools_workload(f"swtpm:host=127.0.0.1,port={port}", tmp_path / "w")
        assert out["unseal"] == SECRET
    finally:
        rc = stop(proc)
        tpm.stop()
    assert rc == 0, (tmp_path / "err.txt").read_text()
    cap = str(tmp_path / "cap.pcapng")
    assert messages(cap) == log_sequence(tpm.log) and len(messages(cap)) > 40
    # the second passed socket (PORT+1) is the control channel: relayed, not re-bound
    assert messages(cap, port=CTRL_PORT) == log_sequence(tpm.log, tpm=False)
    assert "--listen ignored" not in (tmp_path / "err.txt").read_text()


def test_unix_sockets_named(tmp_path):
    tpm = start_swtpm(tmp_path, "unix")
    sock = str(tmp_path / "tpmsniff.sock")
    proc = activate(tmp_path, [sock, sock + ".ctrl"], tpm.data, "--fdname=swtpm:ctrl")
    try:
        rsp = get_random(sock)
        assert len(rsp) == 20
        ready(tmp_path, proc)
        out = tpm2tools_workload(f"swtpm:path={sock}", tmp_path / "w")
        assert out["unseal"] == SECRET
    finally:
        rc = stop(proc)
        tpm.stop()
    assert rc == 0
    assert messages(str(tmp_path / "cap.pcapng")) == log_sequence(tpm.log)
    # systemd's sockets: tpmsniff neither re-creates nor removes their paths
    assert Path(sock).is_socket() or not Path(sock).exists()


def test_no_listen_and_no_sockets_is_a_usage_line(tmp_path):
    p = subprocess.run(
        [*tpmsniff_cmd(), "--upstream", "tcp:127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "--listen is required" in p.stderr
