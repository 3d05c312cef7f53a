"""Chaos (issue 10): good clients next to hostile ones while swtpm restarts and SIGHUP
rotates the capture, with the daemon under a low `ulimit -n`.

Good clients' responses must be identical to swtpm's own (TPM2_Hash: deterministic, and
checked against a direct connection), every message they completed must be in the
capture, and the daemon's fds and RSS must come back to their baseline. About half a
minute by default; `make soak` runs it for TPMSNIFF_CHAOS_SECONDS (600). Loopback only,
every loop bounded by the deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, fds, free_port, require, rss_kib, tpmsniff_cmd, wait_for
from helpers.captured import messages

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("TPMSNIFF_CHAOS_SECONDS", "30"))
NOFILE = 64
EDGE_CODES = [0x80000000, 0x80000001, 0xFFFFFFFF, 0x7FFFFFFF, 0, 0x0F, 0x01]


def hash_cmd(data: bytes) -> bytes:
    body = len(data).to_bytes(2, "big") + data + bytes.fromhex("000b40000007")
    return (
        bytes.fromhex("8001")
        + (10 + len(body)).to_bytes(4, "big")
        + bytes.fromhex("0000017d")
        + body
    )


def hash_rsp(data: bytes) -> bytes:
    """What swtpm answers to hash_cmd(data): the digest and a NULL ticket."""
    body = b"\x00\x20" + hashlib.sha256(data).digest() + bytes.fromhex("8024400000070000")
    return bytes.fromhex("8001") + (10 + len(body)).to_bytes(4, "big") + b"\0\0\0\0" + body


CONNECTS: Counter[str] = Counter()


def conn(port: int, timeout: float = 5) -> socket.socket:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        CONNECTS["refused or failed"] += 1
        raise
    CONNECTS["made"] += 1
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_msg(s: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
        chunk = s.recv(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


class Swtpm:
    def __init__(self, d: Path) -> None:
        self.port = free_port(pair=True)
        (d / "state").mkdir(parents=True)
        self.args = [
            require("swtpm"),
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={d / 'state'}",
            "--flags",
            "not-need-init,startup-clear",
            "--server",
            f"type=tcp,port={self.port}",
            "--ctrl",
            f"type=tcp,port={self.port + 1}",
        ]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                conn(self.port, 1).close()
                return True
            except OSError:
                return False

        wait_for(up, 20, "swtpm")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_chaos(tmp_path):
    sw = Swtpm(tmp_path / "swtpm")
    # "identical to direct": what swtpm itself answers is what we expect
    with conn(sw.port) as s:
        s.sendall(hash_cmd(b"direct"))
        assert recv_msg(s) == hash_rsp(b"direct")
    port = free_port(pair=True)
    pcap = tmp_path / "chaos.pcapng"
    err = tmp_path / "events.jsonl"

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    proc = subprocess.Popen(
        [
            *tpmsniff_cmd(),
            "--listen",
            f"tcp:127.0.0.1:{port}",
            "--upstream",
            f"tcp:127.0.0.1:{sw.port}",
            "--pcap",
            str(pcap),
            "--console",
            "none",
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
        cwd=ROOT,
        preexec_fn=limit,
    )
    wait_for(lambda: '"ready"' in err.read_text() or proc.poll() is not None, 20, "ready")
    assert proc.poll() is None, err.read_text()
    pid = proc.pid
    stats: Counter[str] = Counter()
    done: list[tuple[bytes, bytes]] = []  # (command, response) good clients completed
    wrong: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def good(n: int, rounds: int | None = None) -> None:
        i = 0
        while not stop.is_set() and (rounds is None or i < rounds):
            try:
                with conn(port, 10) as s:
                    for _ in range(3):
                        data = f"good {n} {i} ".encode() * (1 + i % 7)
                        i += 1
                        s.sendall(hash_cmd(data))
                        rsp = recv_msg(s)
                        with lock:
                            stats["good exchanges"] += 1
                            if rsp == hash_rsp(data):
                                done.append((hash_cmd(data), rsp))
                            else:
                                wrong.append((hash_cmd(data), rsp))
            except (OSError, EOFError):
                with lock:
                    stats["good retries"] += 1  # refused in a storm, or swtpm restarting
                time.sleep(0.05)

    def hostile(kind: str, rnd: random.Random) -> None:
        while not stop.is_set():
            with lock:
                stats[kind] += 1
            try:
                if kind == "garbage":
                    with conn(port, 2) as s:
                        s.sendall(rnd.randbytes(rnd.randrange(1, 3000)))
                        with contextlib.suppress(OSError):
                            s.recv(4096)
                elif kind == "slowloris":
                    with conn(port, 2) as s:
                        for b in hash_cmd(b"slow")[:7]:
                            s.send(bytes([b]))
                            if stop.wait(0.2):
                                break
                elif kind == "non-reading":
                    with conn(port, 2) as s:
                        s.setblocking(False)
                        with contextlib.suppress(OSError):
                            for _ in range(50):
                                s.send(hash_cmd(b"hog") * 2000)
                        stop.wait(0.5)
                elif kind == "storm":
                    for _ in range(200):
                        with contextlib.suppress(OSError):
                            conn(port, 2).close()
                elif kind == "fd exhaustion":
                    held = []
                    for _ in range(NOFILE + 40):
                        try:
                            held.append(conn(port, 2))
                        except OSError:
                            break
                    stop.wait(1.0)
                    for s in held:
                        s.close()
                elif kind == "ctrl edges":
                    with conn(port + 1, 2) as s:
                        code = rnd.choice(EDGE_CODES)
                        s.sendall(code.to_bytes(4, "big") + rnd.randbytes(rnd.randrange(0, 4)))
                        with contextlib.suppress(OSError):
                            s.recv(64)
            except OSError:
                pass
            stop.wait(rnd.uniform(0.1, 1.0))

    kinds = ["garbage", "slowloris", "non-reading", "storm", "fd exhaustion", "ctrl edges"]
    # warm-up: every kind once, so the baseline includes what the allocator keeps
    good(0, rounds=6)
    for i, kind in enumerate(kinds):
        t = threading.Thread(target=hostile, args=(kind, random.Random(i)))
        stop.clear()
        t.start()
        time.sleep(0.5)
        stop.set()
        t.join()
    stop.clear()
    good(0, rounds=6)
    base_fds, base_rss = fds(pid), rss_kib(pid)
    CONNECTS.clear()
    threads = [threading.Thread(target=good, args=(n,)) for n in (1, 2, 3)]
    threads += [
        threading.Thread(target=hostile, args=(k, random.Random(i))) for i, k in enumerate(kinds)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + SECONDS
    restarts = hups = 0
    peak_fds = peak_rss = 0
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            peak_fds, peak_rss = max(peak_fds, fds(pid)), max(peak_rss, rss_kib(pid))
            if int(deadline - time.monotonic()) % 10 == 5:
                sw.stop()
                sw.start()
                restarts += 1
            elif int(deadline - time.monotonic()) % 4 == 0:
                proc.send_signal(signal.SIGHUP)
                hups += 1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        good(9, rounds=3)  # still served after all of it
        wait_for(lambda: fds(pid) <= base_fds, 30, f"daemon fds back to {base_fds}")
        end_fds, end_rss = fds(pid), rss_kib(pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        sw.stop()
    log = err.read_text()
    accept_errors = log.count("accept failed")
    refused = log.count("connection limit reached")
    print(
        f"\nchaos {SECONDS:.0f}s: connections {dict(CONNECTS)}; {dict(stats)}; "
        f"swtpm restarts {restarts}, SIGHUP {hups}; "
        f"log lines: accept failed {accept_errors}, connection limit {refused}; "
        f"fds {base_fds} -> peak {peak_fds} -> {end_fds}; "
        f"RSS {base_rss} -> peak {peak_rss} -> {end_rss} KiB; exit {code}"
    )
    assert code == 0 and "Traceback" not in log
    assert not wrong, wrong[:3]
    assert stats["good exchanges"] >= 10 and restarts >= 1 and hups >= 1
    assert end_fds <= base_fds
    assert end_rss <= base_rss + 8 * 1024  # KiB: what Python's allocator may keep
    captured = set(b for _, b in messages(str(pcap)))
    missing = [c for c, r in done if c not in captured or r not in captured]
    assert not missing, f"{len(missing)} of {len(done)} good exchanges not in the capture"
