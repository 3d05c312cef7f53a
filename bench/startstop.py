"""Start and stop, as a CI suite that starts a TPM per test feels them (part of `make bench`).

Figures, each a median over `runs`, tpmsniff (its default relay, `--pcap`, console off)
and socat side by side:
- first: ms from exec to the first relayed reply (a client connects and sends
  GetRandom as soon as the socket accepts);
- ready: ms from exec to READY=1 (sd_notify; socat has none);
- stop: ms from SIGTERM to exit, idle (nothing connected, the capture worker up);
- stop+cl: the same with an idle client connected (as QEMU always is);
- suite: seconds for `cycles` of start swtpm, start the relay, 20 GetRandoms, stop
  both, and its ratio to the same cycles with no relay (target <= 1.25); the cycles of
  every set-up are interleaved.

Run alone: `python bench/startstop.py [--runs N] [--cycles N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")
SNIFF = [sys.executable, "-m", "tpmsniff"]
POLL = 0.0005  # s between connection attempts: finer than any figure measured
TREES = {"tpmsniff": ROOT}  # where each tpmsniff set-up runs from (--compare adds one)


def roundtrip(s: socket.socket) -> None:
    s.sendall(GETRANDOM)
    buf = s.recv(4096)
    while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
        more = s.recv(4096)
        if not more:
            raise RuntimeError("connection closed before the reply")
        buf += more


def swtpm(d: Path, name: str) -> tuple[subprocess.Popen, str]:
    state = d / f"state-{name}"
    state.mkdir(exist_ok=True)
    sock = str(d / f"swtpm-{name}.sock")
    cmd = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}"]
    cmd += ["--server", f"type=unixio,path={sock}", "--flags", "not-need-init,startup-clear"]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL), sock


def relay_cmd(kind: str, listen: str, upstream: str, d: Path) -> list[str]:
    if kind == "socat":
        return ["socat", f"UNIX-LISTEN:{listen},fork", f"UNIX-CONNECT:{upstream}"]
    cmd = [*SNIFF, "--listen", listen, "--upstream", upstream, "--listen-ctrl", "none"]
    return [*cmd, "--log-level", "warning", "--console", "none", "--pcap", str(d / "ss.pcapng")]


def connect_when_up(path: str, proc: subprocess.Popen, deadline: float) -> socket.socket:
    while time.perf_counter() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited early ({proc.returncode})")
        time.sleep(POLL)
    raise RuntimeError(f"{path} did not accept in time")


def stop(proc: subprocess.Popen) -> float:
    """SIGTERM -> exit, in ms."""
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return (time.perf_counter() - t0) * 1000


def one_start(kind: str, upstream: str, d: Path) -> dict[str, float]:
    """exec -> first reply and -> READY=1; then SIGTERM -> exit with an idle client
    connected, and (a second start) with nothing connected."""
    listen = str(d / "ss.sock")
    notify_path = str(d / "ss-notify.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        cwd = TREES.get(kind, ROOT)
        p = subprocess.Popen(relay_cmd(kind, listen, upstream, d), cwd=cwd, env=env)
        s = connect_when_up(listen, p, t0 + 30)
        roundtrip(s)
        out["first"] = (time.perf_counter() - t0) * 1000
        if kind != "socat":
            ns.settimeout(30)
            while b"READY=1" not in ns.recv(256):
                pass
            out["ready"] = (time.perf_counter() - t0) * 1000
        time.sleep(0.3)  # idle: the capture worker has started
        out["stop+cl"] = stop(p)
        s.close()
        p = subprocess.Popen(relay_cmd(kind, listen, upstream, d), cwd=cwd, env=env)
        connect_when_up(listen, p, time.perf_counter() + 30).close()
        time.sleep(0.3)
        out["stop"] = stop(p)
    finally:
        ns.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
    return out


def cycle(kind: str | None, d: Path, commands: int = 20) -> float:
    """Seconds for one per-test TPM: start swtpm (and the relay), `commands` GetRandoms
    on one connection, stop both and wait for them to exit."""
    t0 = time.perf_counter()
    sw, sock = swtpm(d, "suite")
    procs = [sw]
    path = sock
    try:
        connect_when_up(sock, sw, time.perf_counter() + 30).close()
        if kind is not None:
            path = str(d / "suite.sock")
            cmd = relay_cmd(kind, path, sock, d)
            procs.append(subprocess.Popen(cmd, cwd=TREES.get(kind, ROOT)))
        s = connect_when_up(path, procs[-1], time.perf_counter() + 30)
        for _ in range(commands):
            roundtrip(s)
        s.close()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            p.wait(60)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
    return time.perf_counter() - t0


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def measure(runs: int, cycles: int, kinds: tuple[str, ...] = ("socat", "tpmsniff")) -> dict:
    d = Path(tempfile.mkdtemp(prefix="tpmsniff-startstop-"))
    res: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    try:
        sw, sock = swtpm(d, "0")
        try:
            connect_when_up(sock, sw, time.perf_counter() + 30).close()
            for _ in range(runs):  # interleaved: the machine may be shared and noisy
                for k in kinds:
                    for key, v in one_start(k, sock, d).items():
                        res[k].setdefault(key, []).append(v)
        finally:
            sw.terminate()
            sw.wait(30)
        totals: dict[str | None, float] = {None: 0.0, **{k: 0.0 for k in kinds}}
        for _ in range(cycles):  # interleaved, like the runs above
            for kind in totals:
                totals[kind] += cycle(kind, d)
        direct = totals[None]
        for k in kinds:
            res[k]["suite"] = [totals[k]]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    table = {k: {key: med(v) for key, v in r.items()} for k, r in res.items()}
    for k in kinds:
        table[k]["suite_ratio"] = table[k]["suite"] / direct
    table["direct"] = {"suite": direct, "suite_ratio": 1.0}
    return table


def print_table(table: dict, runs: int, cycles: int, say: Callable[[str], None] = print) -> None:
    say(
        f"start/stop: medians of {runs} runs; suite = {cycles} cycles of start swtpm "
        "(+ relay), 20 GetRandoms, stop both"
    )
    head = (
        f"{'set-up':<10} {'first':>7} {'ready':>7} {'stop':>7} {'stop+cl':>8} "
        f"{'suite s':>8} {'vs':>5}"
    )
    say(head)
    say("-" * len(head))

    def f(v: float | None, w: int, p: int = 1) -> str:
        return f"{'-':>{w}}" if v is None or v != v else f"{v:{w}.{p}f}"

    for k in ("direct", "socat", *TREES):
        r = table.get(k)
        if r is None:
            continue
        say(
            f"{k:<10} {f(r.get('first'), 7)} {f(r.get('ready'), 7)} {f(r.get('stop'), 7)} "
            f"{f(r.get('stop+cl'), 8)} {f(r.get('suite'), 8, 2)} {f(r.get('suite_ratio'), 5, 2)}"
        )
    say(
        "goals (ms): first <= 100, ready <= 150, stop <= 50 (idle, with or without a "
        "client); suite vs direct <= 1.25"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--compare", metavar="DIR", help="also a tpmsniff tree (e.g. before a change)")
    args = ap.parse_args()
    for tool in ("swtpm", "socat"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; run `make deps`")
    load0 = os.getloadavg()[0]
    kinds: tuple[str, ...] = ("socat", "tpmsniff")
    if args.compare:
        TREES["compared"] = Path(args.compare).resolve()
        kinds += ("compared",)
    table = measure(args.runs, args.cycles, kinds)
    print(f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print_table(table, args.runs, args.cycles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
