"""Wireshark's interface list (issue 19, item 2): a daemon with --pcap-tee offers its live
pcapng on a 0600 socket; `tpmsniff extcap --install --user` puts the launcher where the
installed tshark looks (a temporary HOME here), `tshark -D` lists the daemon, and
`tshark -i` captures packets it decodes as TPM. A reader that stops reading loses packets
(counted, logged once) and never stalls the relay."""

from __future__ import annotations

import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, recv_exact, require, start_sniff, start_swtpm, tpmsniff_cmd, wait_for
from helpers.workload import tpm2tools_workload

from tpmsniff.inputs.pcapng import read_pcapng

pytestmark = pytest.mark.integration

GET_RANDOM = struct.pack(">HIIH", 0x8001, 12, 0x17B, 32)


@pytest.fixture
def env(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("TPMSNIFF_RUNTIME_DIR", str(tmp_path / "run"))
    return home


def tee_arg(path: Path) -> list[str]:
    return ["--pcap-tee", str(path)]


def events(sniff, name: str) -> list[dict]:
    return [e for e in sniff.log_events() if e.get("event") == name]


def test_tshark_captures_from_a_running_daemon(tmp_path, env):
    tshark = require("tshark")
    p = subprocess.run(
        [*tpmsniff_cmd(), "extcap", "--install", "--user"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    launcher = Path(p.stdout.strip())
    assert launcher.is_relative_to(env) and launcher.stat().st_mode & 0o111
    tpm = start_swtpm(tmp_path, "tcp")
    tee = tmp_path / "tee.sock"
    sniff = start_sniff(tmp_path, tpm.data, extra=["--pcap-tee", str(tee)])
    try:
        assert stat.S_IMODE(tee.stat().st_mode) == 0o600
        listed = subprocess.run([tshark, "-D"], capture_output=True, text=True, timeout=60)
        mine = [x for x in listed.stdout.splitlines() if f"tpmsniff daemon ({tee})" in x]
        assert len(mine) == 1 and "tpmsniff-proxy" in listed.stdout, listed.stdout
        iface = mine[0].split()[1]  # "16. tpmsniff-PID (tpmsniff daemon (PATH))"
        out = tmp_path / "live.pcapng"
        n = 120
        cap = subprocess.Popen(
            [tshark, "-i", iface, "-a", f"packets:{n}", "-w", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: events(sniff, "pcap-tee reader connected"), 30, "extcap reader")
        tpm2tools_workload(sniff.tcti, tmp_path / "w")
        assert cap.wait(60) == 0, cap.stderr.read().decode()
    finally:
        rc = sniff.stop()
        tpm.stop()
    assert rc == 0
    pkts = list(read_pcapng(str(out)))
    assert len(pkts) == n and all(p.comment for p in pkts)
    decoded = subprocess.run(
        [tshark, "-r", str(out), "-Y", "tpm", "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert decoded.returncode == 0 and len(decoded.stdout.split()) >= 20
    assert not list((tmp_path / "run").iterdir())  # unregistered at stop


def test_stalled_reader_never_stalls_the_relay(tmp_path, env):
    tpm = start_swtpm(tmp_path, "tcp")
    tee = tmp_path / "tee.sock"
    sniff = start_sniff(
        tmp_path, tpm.data, extra=["--pcap-tee", str(tee), "--pcap-tee-buffer", "64K"]
    )
    try:
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(tee))  # and never reads
        wait_for(lambda: events(sniff, "pcap-tee reader connected"), 30, "reader")
        host, port = sniff.listen.removeprefix("tcp:").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as c:
            for _ in range(3000):  # ~1.5 MB of pcapng blocks, far beyond 64K + buffers
                c.sendall(GET_RANDOM)
                head = recv_exact(c, 10)
                recv_exact(c, struct.unpack(">I", head[2:6])[0] - 10)
        wait_for(lambda: events(sniff, "pcap-tee reader too slow; dropping packets for it"), 30)
        stuck.close()
        wait_for(lambda: events(sniff, "pcap-tee reader left"), 30, "reader left")
    finally:
        rc = sniff.stop()
        tpm.stop()
    assert rc == 0
    assert len(events(sniff, "pcap-tee reader too slow; dropping packets for it")) == 1
    left = events(sniff, "pcap-tee reader left")[0]
    assert left["reader"] == 1 and left["dropped"] > 0
    # the file capture, beside the tee, has every message
    assert sum(1 for _ in read_pcapng(str(sniff.pcap))) >= 6000


def test_tee_refuses_a_file_or_symlink(tmp_path, env):
    target = tmp_path / "keep"
    target.write_text("keep")
    link = tmp_path / "tee.sock"
    link.symlink_to(target)
    for path in (link, target):
        p = subprocess.run(
            [*tpmsniff_cmd(), "--listen", str(tmp_path / "l"), "--upstream", "/no", *tee_arg(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "--pcap-tee" in p.stderr
    assert target.read_text() == "keep" and link.is_symlink()


def test_proxy_interface_captures_into_wiresharks_fifo(tmp_path, env):
    """ "tpmsniff: start a TPM proxy" as Wireshark runs it: `--capture --fifo F` with the
    config dialog's Listen/Upstream; the proxy relays tpm2-tools and its annotated pcapng
    arrives in the fifo; Wireshark's stop (SIGTERM) ends it with exit 0."""
    import os
    import signal
    import threading

    from conftest import free_port

    tpm = start_swtpm(tmp_path, "tcp")
    port = free_port(pair=True)
    fifo = tmp_path / "wireshark.fifo"
    os.mkfifo(fifo)
    got = bytearray()

    def read() -> None:  # what Wireshark does with the fifo
        with open(fifo, "rb") as f:
            while chunk := f.read(65536):
                got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proxy = subprocess.Popen(
        [
            *tpmsniff_cmd(),
            "extcap",
            "--capture",
            "--extcap-interface",
            "tpmsniff-proxy",
            "--fifo",
            str(fifo),
            "--listen",
            f"tcp:127.0.0.1:{port}",
            "--upstream",
            tpm.data,
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port + 1), 0.5).close()
                return True
            except OSError:
                return False

        wait_for(accepting, 30, "the proxy listening")
        tpm2tools_workload(f"swtpm:host=127.0.0.1,port={port}", tmp_path / "w")
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(60) == 0, proxy.stderr.read().decode() if proxy.stderr else ""
    finally:
        if proxy.poll() is None:
            proxy.kill()
        tpm.stop()
    reader.join(30)
    out = tmp_path / "live.pcapng"
    out.write_bytes(bytes(got))
    pkts = [p for p in read_pcapng(str(out)) if p.comment]
    cmds = [p for p in pkts if "cmd " in (p.comment or "")]
    assert len(cmds) > 20 and any("Unseal" in (p.comment or "") for p in cmds)
