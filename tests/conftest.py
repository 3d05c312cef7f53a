"""Fixtures that run the real things: swtpm, tpmsniff as a process, tpm2-tools.

A missing tool is a test *failure* (never a skip): CI must not pass vacuously.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"required tool {tool!r} is not installed (run `make deps`)", pytrace=False)
    return path


def free_port(pair: bool = False, low: bool = False) -> int:
    """A free TCP port (and port+1 if pair) on 127.0.0.1. `low`: below the ephemeral range,
    so clients' ports are above it (Wireshark's TPM dissector tells direction that way)."""
    import random

    for _ in range(100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", random.randrange(20000, 30000) if low else 0))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port >= 65000:
            continue
        if not pair:
            return port
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def _rx_queue(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """Bytes the kernel holds for the socket local<-remote that its owner has not read yet
    (/proc/net/tcp rx_queue), or None if no such IPv4 socket exists."""

    def hexaddr(a: tuple[str, int]) -> str:
        return socket.inet_aton(a[0])[::-1].hex().upper() + f":{a[1]:04X}"

    want = (hexaddr(local), hexaddr(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if (f[1], f[2]) == want:
            return int(f[4].split(":")[1], 16)
    return None


def wait_consumed(s: socket.socket, timeout: float = 10.0) -> None:
    """Wait until the peer process has read everything sent on `s` so far: an event, so a
    test can make the peer see two writes as two reads without sleeping."""
    if s.family == socket.AF_UNIX:
        import fcntl
        import termios

        def done() -> bool:
            buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            return int.from_bytes(buf, "little") == 0  # unread by the receiver

    else:
        me, peer = s.getsockname()[:2], s.getpeername()[:2]

        def done() -> bool:
            q = _rx_queue(peer, me)
            return q is not None and q == 0

    wait_for(done, timeout, "the peer to read what was sent")


def _connectable(addr) -> bool:
    fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.connect(addr)
        except OSError:
            return False
    return True


@dataclass
class Swtpm:
    proc: subprocess.Popen
    dir: Path
    log: Path
    data: str  # tpmsniff ADDR of the data channel
    ctrl: str
    tcti: str  # TPM2TOOLS_TCTI for a direct connection

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_swtpm(
    tmp: Path,
    kind: str = "tcp",
    name: str = "swtpm",
    extra: list[str] | None = None,
    log_opts: str = "level=2",
    low_port: bool = False,
) -> Swtpm:
    exe = require("swtpm")
    d = tmp / name
    (d / "state").mkdir(parents=True)
    log = d / "swtpm.log"
    args = [
        exe,
        "socket",
        "--tpm2",
        "--tpmstate",
        f"dir={d / 'state'}",
        "--flags",
        "not-need-init,startup-clear",
        "--log",
        f"file={log},{log_opts}",
    ]
    if kind == "tcp":
        port = free_port(pair=True, low=low_port)
        args += ["--server", f"type=tcp,port={port}", "--ctrl", f"type=tcp,port={port + 1}"]
        data, ctrl = f"tcp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port + 1}"
        tcti = f"swtpm:host=127.0.0.1,port={port}"
        probe = ("127.0.0.1", port)
    else:
        sock = str(d / "swtpm.sock")
        args += ["--server", f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={sock}.ctrl"]
        data, ctrl, tcti, probe = sock, sock + ".ctrl", f"swtpm:path={sock}", sock
    args += extra or []
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sw = Swtpm(proc, d, log, data, ctrl, tcti)
    try:
        if kind == "tcp":
            wait_for(lambda: _connectable(probe) or proc.poll() is not None, what="swtpm")
        else:
            wait_for(lambda: os.path.exists(probe) or proc.poll() is not None, what="swtpm")
    except TimeoutError:
        sw.stop()
        raise
    if proc.poll() is not None:
        pytest.fail(f"swtpm exited: {proc.stderr.read().decode()}")
    return sw


@pytest.fixture
def swtpm_tcp(tmp_path):
    sw = start_swtpm(tmp_path, "tcp")
    yield sw
    sw.stop()


@pytest.fixture
def swtpm_unix(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    yield sw
    sw.stop()


@pytest.fixture(params=["tcp", "unix"])
def swtpm_any(request, tmp_path):
    sw = start_swtpm(tmp_path, request.param)
    yield sw
    sw.stop()


@dataclass
class Sniff:
    proc: subprocess.Popen
    listen: str
    tcti: str
    pcap: Path
    stdout: Path
    stderr: Path
    events: list[dict] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_events(self) -> list[dict]:
        out = []
        for line in self.stderr.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "line": line})
        return out

    def console(self) -> str:
        return self.stdout.read_text()


# TPMSNIFF_SNIFF_X=v sets X=v for tpmsniff only (`make sanitize`: LD_PRELOAD, the build)
SNIFF_ENV = {
    k[len("TPMSNIFF_SNIFF_") :]: v for k, v in os.environ.items() if k.startswith("TPMSNIFF_SNIFF_")
}


def tpmsniff_cmd() -> list[str]:
    return [sys.executable, "-m", "tpmsniff"]


def start_sniff(
    tmp: Path,
    upstream: str,
    *,
    kind: str | None = None,
    extra: list[str] | None = None,
    name: str = "sniff",
    preexec=None,
    pcap: bool = True,
    env: dict[str, str] | None = None,
) -> Sniff:
    kind = kind or ("tcp" if upstream.startswith("tcp:") else "unix")
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    if kind == "tcp":
        port = free_port(pair=True)
        listen, tcti, probe = (
            f"tcp:127.0.0.1:{port}",
            f"swtpm:host=127.0.0.1,port={port}",
            ("127.0.0.1", port),
        )
    else:
        listen = str(d / "sniff.sock")
        tcti, probe = f"swtpm:path={listen}", listen
    pcap_path = d / "capture.pcapng"
    out, err = d / "console.txt", d / "events.jsonl"
    args = (
        tpmsniff_cmd()
        + ["--listen", listen, "--upstream", upstream, "--log-format", "json"]
        + (["--pcap", str(pcap_path)] if pcap else [])
        + (extra or [])
    )
    proc = subprocess.Popen(
        args,
        stdout=out.open("w"),
        stderr=err.open("w"),
        cwd=ROOT,
        preexec_fn=preexec,
        env={**os.environ, **SNIFF_ENV, **(env or {})},
    )
    s = Sniff(proc, listen, tcti, pcap_path, out, err)
    wait_for(lambda: proc.poll() is not None or '"ready"' in err.read_text(), 20, "tpmsniff ready")
    if proc.poll() is not None:
        pytest.fail(f"tpmsniff exited {proc.returncode}: {err.read_text()}")
    assert _connectable(probe)
    return s


def run_tool(
    args: list[str], tcti: str, cwd: Path, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    require(args[0])
    env = dict(os.environ, TPM2TOOLS_TCTI=tcti)
    p = subprocess.run(args, env=env, cwd=cwd, input=input, capture_output=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.decode()}")
    return p


def pytest_sessionstart(session) -> None:
    """The native relay is tested like every relay path: build it if it is not built
    (a compiler error fails the session, like a missing tool)."""
    from tpmsniff._native import NativeUnavailable, load

    try:
        load()
    except NativeUnavailable:
        from tpmsniff._native.build import build

        build()


def connect(addr: str, timeout: float = 10) -> socket.socket:
    """A raw client socket to a tpmsniff/swtpm ADDR (`tcp:HOST:PORT` or a Unix path)."""
    if addr.startswith("tcp:"):
        host, port = addr[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def tiny_tmpfs(tmp: Path, size: str = "16k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at tmp/small (a disk that fills up), unmounted after."""
    small = tmp / "small"
    small.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root, as in CI): {p.stderr}")
    try:
        yield small
    finally:
        subprocess.run(["umount", str(small)], check=False)
