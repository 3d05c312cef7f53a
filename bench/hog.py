"""Goal 5 of issue 18 in `make bench`: a client that leaves releases the TPM at once.

A hog writes up to 400,000 GetRandoms for 15 s without reading, then closes (its unread
responses make the kernel reset it); a new client's first round trip is then timed, for
swtpm directly, socat, and tpmsniff with each relay (goal: <= 100 ms, as directly).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from bench import GETRANDOM, start_relay, start_swtpm

HOG_COMMANDS = 400_000
SETUPS = {
    "direct": None,
    "socat": "socat",
    "python relay": "tpmsniff python",
    "native relay": "tpmsniff native",
}


def _hog(path: str, seconds: float, limit: int) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    burst = GETRANDOM * 256
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and sent < limit * len(GETRANDOM):
        try:
            sent += s.send(burst)
        except BlockingIOError:
            time.sleep(0.0005)
    s.close()
    return sent // len(GETRANDOM)


def _next_client_ms(path: str) -> float:
    t = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(GETRANDOM)
        got = b""
        while len(got) < 10 or len(got) < int.from_bytes(got[2:6], "big"):
            chunk = s.recv(4096)
            if not chunk:
                return float("nan")
            got += chunk
    return (time.monotonic() - t) * 1000


def hog_table(d: Path, seconds: float) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for name, kind in SETUPS.items():
        procs: list[subprocess.Popen] = []
        try:
            sw, sock = start_swtpm(d, f"hog-{name.replace(' ', '-')}")
            procs.append(sw)
            path = sock
            if kind is not None:
                path = str(d / f"hog-{name.replace(' ', '-')}.sock")
                procs.append(start_relay(kind, path, sock, d))
            _next_client_ms(path)  # warm: the first round trip of a fresh set-up
            n = _hog(path, seconds, HOG_COMMANDS)
            out[name] = (n, _next_client_ms(path))
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(f"\nnext client after a hog ({seconds:.0f} s of GetRandoms, not read, then close):")
    print(f"{'set-up':<14} {'written':>8} {'next ms':>8}")
    for name, (n, ms) in out.items():
        print(f"{name:<14} {n:>8} {ms:>8.1f}")
    print("goal: next ms <= 100 with tpmsniff, as directly")
    return out
