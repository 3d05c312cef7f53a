"""`make bench`: what tpmsniff costs on the wire, side by side with a C byte relay (socat).

Prints one table. Rows: direct to swtpm, through socat, through tpmsniff in each variant
(python relay / native relay, console off or `--console summary`, pcapng on; and the
native relay with no output at all, its floor).
Unix sockets, one persistent raw client sending GetRandom(16) back to back.

Columns (each a median over interleaved rounds: the machine may be shared and noisy):
- p50, p99: round-trip latency in µs.
- add50: added median latency against socat's, (p50 - p50_direct) / (socat p50 - p50_direct);
  target <= 0.75 (issue 18).
- add99: added tail against socat's, (p99 - p50_direct) / (socat p99 - p50_direct);
  target <= 1.50 (issue 18).
- start, ready: ms from exec to the listening socket accepting, and to READY=1 (sd_notify).
- 4cl/s: aggregate commands/s of 4 concurrent clients, each with its own swtpm and its own
  relay, and its ratio to socat's (target >= 1.00).
- rss: growth of relay + worker RSS over 60,000 commands (MiB, target < 5).
- relay, worker: CPU µs per round trip (all threads of the relay process; the capture worker).

Then a second table (bench/startstop.py): exec -> first relayed reply, READY=1, SIGTERM ->
exit idle and with an idle client connected, and a per-test-TPM suite (50 cycles of start
swtpm and the relay, 20 commands, stop both) against the same cycles direct; socat alongside.
Then a third (bench/hog.py, --hog-seconds): the next client's first round trip after a client
that wrote GetRandoms without reading and left, directly, through socat and each relay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import startstop  # bench/: the start/stop table

ROOT = Path(__file__).resolve().parent.parent
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")
SNIFF = [sys.executable, "-m", "tpmsniff"]
BASE_ARGS = ["--listen-ctrl", "none", "--log-level", "warning"]
PCAP = "--pcap"  # followed by a path the bench chooses
VARIANTS: dict[str, list[str]] = {
    "tpmsniff python": ["--relay", "python", "--console", "none", PCAP],
    "tpmsniff native": ["--relay", "native", "--console", "none", PCAP],
    "python +console": ["--relay", "python", "--console", "summary", PCAP],
    "native +console": ["--relay", "native", "--console", "summary", PCAP],
    "native, no output": ["--relay", "native", "--console", "none"],
}


def variant_args(kind: str, pcap: str) -> list[str]:
    out = []
    for a in VARIANTS[kind]:
        out += [PCAP, pcap] if a == PCAP else [a]
    return out


# -- helpers ------------------------------------------------------------------------
def wait_path(path: str, proc: subprocess.Popen, what: str) -> None:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                return
            except OSError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early ({proc.returncode})")
        time.sleep(0.005)
    raise RuntimeError(f"{what}: {path} did not appear")


def client_loop(path: str, n: int) -> list[int]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    lat = []
    recv, send, clock = s.recv, s.sendall, time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        send(GETRANDOM)
        buf = recv(4096)
        while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
            more = recv(4096)
            if not more:
                raise SystemExit(f"bench: {path} closed the connection")
            buf += more
        lat.append(clock() - t0)
    s.close()
    return lat


def tasks(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return os.listdir(f"/proc/{pid}/task")
    return []


def children(pid: int) -> list[int]:
    out = []
    for t in tasks(pid):
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid, in ns (schedstat: not tick-rounded)."""
    total = 0
    for t in tasks(pid):
        with contextlib.suppress(OSError, ValueError):
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
    return total


def socat_cpu(upstream: str, d: Path, n: int) -> float:
    """CPU µs per round trip of socat relaying one connection (no fork: its one process
    is measured while the connection is open)."""
    listen = str(d / "socat-cpu.sock")
    p = subprocess.Popen(["socat", f"UNIX-LISTEN:{listen}", f"UNIX-CONNECT:{upstream}"])
    try:
        end = time.monotonic() + 30
        while not os.path.exists(listen) and time.monotonic() < end:
            time.sleep(0.005)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(listen)
        for i in range(n + 100):
            if i == 100:  # after a warm-up
                before = cpu_ns(p.pid)
            s.sendall(GETRANDOM)
            buf = s.recv(4096)
            while len(buf) < 10 or len(buf) < int.from_bytes(buf[2:6], "big"):
                buf += s.recv(4096)
        used = cpu_ns(p.pid) - before
        s.close()
    finally:
        p.terminate()
        p.wait(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
    return used / n / 1000


def settle(pid: int, timeout: float = 60.0) -> None:
    """Wait until pid's capture worker is idle: its CPU time grows by < 1 ms in 200 ms."""
    end = time.monotonic() + timeout
    last = sum(map(cpu_ns, children(pid)))
    while time.monotonic() < end:
        time.sleep(0.2)
        now = sum(map(cpu_ns, children(pid)))
        if now - last < 1_000_000:
            return
        last = now


def rss_kib(pid: int) -> int:
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def start_swtpm(d: Path, name: str) -> tuple[subprocess.Popen, str]:
    state = d / f"state-{name}"
    state.mkdir()
    sock = str(d / f"swtpm-{name}.sock")
    p = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={state}",
            "--server",
            f"type=unixio,path={sock}",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stderr=subprocess.DEVNULL,
    )
    wait_path(sock, p, "swtpm")
    return p, sock


def start_relay(kind: str, listen: str, upstream: str, d: Path) -> subprocess.Popen:
    if kind == "socat":
        cmd = ["socat", f"UNIX-LISTEN:{listen},fork", f"UNIX-CONNECT:{upstream}"]
    else:
        pcap = str(Path(listen).with_suffix(".pcapng"))
        cmd = [*SNIFF, "--listen", listen, "--upstream", upstream]
        cmd += BASE_ARGS + variant_args(kind, pcap)
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_path(listen, p, kind)
    return p


def startup(kind: str, upstream: str, d: Path) -> tuple[float, float]:
    """ms from exec to accepting, and to READY=1 (socat: no READY)."""
    listen = str(d / "start.sock")
    notify_path = str(d / "notify.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    ns.setblocking(False)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    if kind == "socat":
        cmd = ["socat", f"UNIX-LISTEN:{listen},fork", f"UNIX-CONNECT:{upstream}"]
    else:
        cmd = [*SNIFF, "--listen", listen, "--upstream", upstream]
        cmd += BASE_ARGS + variant_args(kind, str(d / "s.pcapng"))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    accepting = ready = float("nan")
    try:
        end = t0 + 20
        while time.perf_counter() < end and (accepting != accepting or ready != ready):
            now = time.perf_counter()
            if accepting != accepting:
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(listen)
                    accepting = (now - t0) * 1000
                except OSError:
                    pass
            if ready != ready:
                try:
                    if b"READY=1" in ns.recv(256):
                        ready = (now - t0) * 1000
                except BlockingIOError:
                    pass
            if kind == "socat" and accepting == accepting:
                break
            if p.poll() is not None:
                break
            time.sleep(0.0005)
    finally:
        p.terminate()
        p.wait(30)
        ns.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
    return accepting, ready


THROUGHPUT_CLIENT = """
import socket, sys, time
path, start, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
GR = bytes.fromhex("80010000000c0000017b0010")
s = socket.socket(socket.AF_UNIX); s.connect(path)
while time.time() < start: time.sleep(0.001)
n = 0; end = time.perf_counter() + secs
while time.perf_counter() < end:
    for _ in range(50):
        s.sendall(GR); b = s.recv(4096)
        while len(b) < 10 or len(b) < int.from_bytes(b[2:6], "big"): b += s.recv(4096)
    n += 50
print(n)
"""


def throughput(paths: list[str], secs: float) -> float:
    start = time.time() + 0.3
    ps = [
        subprocess.Popen(
            [sys.executable, "-c", THROUGHPUT_CLIENT, p, str(start), str(secs)],
            stdout=subprocess.PIPE,
        )
        for p in paths
    ]
    total = 0
    for p in ps:
        out, _ = p.communicate(60)
        total += int(out)
    return total / secs


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def offline(copies: int, small: int) -> dict[str, dict[str, float]]:
    """Offline decode cost, CPU seconds (user + sys of the processes), tpmsniff decode
    --output jsonl (every field) against tshark -V, on the same captures:
    - many small files: `small` captures cycled from every recording in tests/data (the
      ESAPI and all-commands pcapngs, the swtpm logs as tpmsniff pcapng, and each of
      those as classic pcap written by editcap); tpmsniff decodes them in one run (it
      takes many inputs), tshark in one run per file (it reads one);
    - one large file: the recorded tpm2-tools workload and all-commands capture,
      `copies` times, as one tpmsniff pcapng.
    ratio = tshark's CPU / tpmsniff's (goal: >= 1.00)."""
    data = ROOT / "tests" / "data"

    def cpu(cmds: list[list[str]]) -> tuple[float, bytes]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = b""
        for cmd in cmds:
            out += subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out

    res: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        kinds: list[Path] = sorted(data.glob("*.pcapng"))
        for log in sorted(data.glob("*.swtpm.log")):
            out = d / (log.name.removesuffix(".swtpm.log") + ".pcapng")
            subprocess.run([*SNIFF, "decode", str(log), "--pcap", str(out)], cwd=ROOT,
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            kinds.append(out)
        for cap in list(kinds):
            pcap = d / (cap.stem + ".pcap")
            subprocess.run(["editcap", "-F", "pcap", str(cap), str(pcap)], check=True)
            kinds.append(pcap)
        files = []
        for i in range(small):
            f = d / f"small{i:03d}{kinds[i % len(kinds)].suffix}"
            shutil.copy(kinds[i % len(kinds)], f)
            files.append(str(f))
        big = d / "large.pcapng"
        mixed = [str(data / "tpm2tools-workload.swtpm.log"), str(data / "all-commands.pcapng")]
        subprocess.run([*SNIFF, "decode", *mixed * copies, "--pcap", str(big)], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        for name, inputs in ((f"{small} small files", files), ("one large file", [str(big)])):
            ours, out = cpu([[*SNIFF, "decode", *inputs, "--output", "jsonl"]])
            theirs, _ = cpu([["tshark", "-r", f, "-V"] for f in inputs])
            row = {"messages": out.count(b"\n"), "tpmsniff": ours, "tshark": theirs}
            if len(inputs) > 1:  # also one tpmsniff run per file, as tshark is run
                row["tpmsniff_each"], _ = cpu(
                    [[*SNIFF, "decode", f, "--output", "jsonl"] for f in inputs]
                )
            res[name] = row
    print(f"{'offline decode':<18} {'msgs':>7} {'tpmsniff s':>10} {'tshark -V s':>11} {'ratio':>6}")
    for name, r in res.items():
        print(
            f"{name:<18} {r['messages']:>7.0f} {r['tpmsniff']:>10.2f} {r['tshark']:>11.2f} "
            f"{r['tshark'] / r['tpmsniff']:>6.2f}"
        )
        if "tpmsniff_each" in r:
            each = r["tpmsniff_each"]
            ratio = r["tshark"] / each
            print(f"{'  one run per file':<18} {'':>7} {each:>10.2f} {'':>11} {ratio:>6.2f}")
    print("goal: offline ratio (tshark -V CPU / tpmsniff decode --output jsonl CPU) >= 1.00")
    return res


# -- main ---------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="commands per round and set-up")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--starts", type=int, default=3, help="start-up runs per set-up")
    ap.add_argument("--tp-seconds", type=float, default=1.0, help="4-client run length")
    ap.add_argument("--tp-rounds", type=int, default=2)
    ap.add_argument("--rss-commands", type=int, default=60000)
    ap.add_argument("--only", action="append", help="tpmsniff variants to run (repeatable)")
    ap.add_argument("--no-offline", action="store_true", help="skip timing offline decoding")
    ap.add_argument("--offline-copies", type=int, default=100, help="copies in the large file")
    ap.add_argument("--offline-files", type=int, default=120, help="how many small files")
    ap.add_argument("--ss-runs", type=int, default=5, help="start/stop runs (0: skip)")
    ap.add_argument("--ss-cycles", type=int, default=50, help="per-test-TPM suite cycles")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--hog-seconds", type=float, default=15.0, help="goal 5: hog length (0: skip)")
    args = ap.parse_args()
    for tool in ("swtpm", "socat"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found; run `make deps`")
    variants = [v for v in VARIANTS if not args.only or v in args.only]
    t_begin = time.monotonic()
    load0 = os.getloadavg()[0]
    d = Path(tempfile.mkdtemp(prefix="tpmsniff-bench-"))
    procs: list[subprocess.Popen] = []
    relays: dict[str, subprocess.Popen] = {}
    res: dict[str, dict[str, list[float]]] = {}
    setups = ["direct", "socat", *variants]
    for s in setups:
        res[s] = {k: [] for k in ("p50", "p99", "relay", "worker", "start", "ready", "tp")}
    failed: dict[str, str] = {}
    try:
        sw, sw_sock = start_swtpm(d, "0")
        procs.append(sw)
        paths = {"direct": sw_sock}
        for kind in ["socat", *variants]:
            listen = str(d / f"{kind.replace(' ', '_').replace('+', '')}.sock")
            try:
                relays[kind] = start_relay(kind, listen, sw_sock, d)
            except RuntimeError as exc:
                failed[kind] = str(exc)
                continue
            procs.append(relays[kind])
            paths[kind] = listen
        live = [s for s in setups if s in paths]

        # 1. latency, interleaved rounds
        for s in live:
            client_loop(paths[s], 500)  # warm-up
        time.sleep(0.5)  # the workers catch up with the warm-up
        sniffs = [s for s in live if s in relays and s != "socat"]
        cpu0 = {
            s: (cpu_ns(relays[s].pid), sum(map(cpu_ns, children(relays[s].pid)))) for s in sniffs
        }
        for _ in range(args.rounds):
            for s in live:
                lat = client_loop(paths[s], args.n)
                q = statistics.quantiles(lat, n=100)
                res[s]["p50"].append(q[49] / 1000)
                res[s]["p99"].append(q[98] / 1000)

        # CPU per round trip over all rounds, once the workers have caught up (a worker
        # may decode a round's records while the next set-up is measured, and may lag
        # well behind: its CPU is read once it has stopped growing)
        time.sleep(0.2)
        for s in sniffs:
            settle(relays[s].pid)
        for s in sniffs:
            pid = relays[s].pid
            total = args.rounds * args.n * 1000
            res[s]["relay"].append((cpu_ns(pid) - cpu0[s][0]) / total)
            res[s]["worker"].append((sum(map(cpu_ns, children(pid))) - cpu0[s][1]) / total)

        socat_us = med([socat_cpu(sw_sock, d, args.n) for _ in range(args.rounds)])

        # 2. RSS growth over many commands (after warm-up)
        rss: dict[str, float] = {}
        for s in live:
            if s in ("direct", "socat"):
                continue
            client_loop(paths[s], 2000)
            before = rss_kib(relays[s].pid)
            client_loop(paths[s], args.rss_commands)
            time.sleep(0.2)
            rss[s] = (rss_kib(relays[s].pid) - before) / 1024

        # 3. start-up
        for _ in range(args.starts):
            for s in ["socat", *variants]:
                if s in failed:
                    continue
                acc, rdy = startup(s, sw_sock, d)
                res[s]["start"].append(acc)
                res[s]["ready"].append(rdy)
        for p in relays.values():  # all at once: each worker first drains its queue
            p.terminate()
        for p in relays.values():
            p.wait(60)
        procs = [sw]

        # 4. throughput: 4 clients, each with its own swtpm and its own relay
        tp_sw = [start_swtpm(d, f"tp{i}") for i in range(4)]
        procs += [p for p, _ in tp_sw]
        tp_paths: dict[str, list[str]] = {"direct": [s for _, s in tp_sw]}
        for kind in ["socat", *variants]:
            if kind in failed:
                continue
            tp_paths[kind] = []
            for i, (_, up) in enumerate(tp_sw):
                listen = str(d / f"tp{i}-{kind.replace(' ', '_').replace('+', '')}.sock")
                procs.append(start_relay(kind, listen, up, d))
                tp_paths[kind].append(listen)
        for _ in range(args.tp_rounds):
            for s in tp_paths:
                res[s]["tp"].append(throughput(tp_paths[s], args.tp_seconds))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(60)  # the capture worker first drains what it has queued
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)

    # -- the table --------------------------------------------------------------
    def ratio(s: str, key: str, ref: str) -> float:
        """Median over rounds of (key - p50_direct) / (socat key - p50_direct)."""
        out = []
        for i in range(len(res["direct"]["p50"])):
            base = res["direct"]["p50"][i]
            den = res["socat"][key][i] - base
            if den > 0 and i < len(res[s][key]):
                out.append((res[s][key][i] - base) / den)
        return med(out)

    print(
        f"make bench: {args.rounds} interleaved rounds x {args.n} GetRandom(16), medians; "
        f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end, "
        f"{os.cpu_count()} CPUs"
    )
    head = (
        f"{'set-up':<18} {'p50µs':>6} {'p99µs':>6} {'add50':>6} {'add99':>6} "
        f"{'start':>6} {'ready':>6} {'4cl/s':>7} {'vs':>5} {'rss':>6} {'relay':>6} {'worker':>6}"
    )
    print(head)
    print("-" * len(head))
    socat_tp = med(res["socat"]["tp"])
    table = {}
    for s in setups:
        if s in failed:
            print(f"{s:<18} n/a: {failed[s]}")
            continue
        r = res[s]
        row = {
            "p50": med(r["p50"]),
            "p99": med(r["p99"]),
            "add50": ratio(s, "p50", "socat") if s not in ("direct",) else float("nan"),
            "add99": ratio(s, "p99", "socat") if s not in ("direct",) else float("nan"),
            "start": med(r["start"]),
            "ready": med(r["ready"]),
            "tp": med(r["tp"]),
            "rss": rss.get(s, float("nan")),
            "relay": med(r["relay"]),
            "worker": med(r["worker"]),
        }
        row["tp_ratio"] = row["tp"] / socat_tp if socat_tp else float("nan")
        table[s] = row

        def f(v: float, w: int, p: int = 1) -> str:
            return f"{'-':>{w}}" if v != v else f"{v:{w}.{p}f}"

        print(
            f"{s:<18} {f(row['p50'], 6)} {f(row['p99'], 6)} {f(row['add50'], 6, 2)} "
            f"{f(row['add99'], 6, 2)} {f(row['start'], 6, 0)} {f(row['ready'], 6, 0)} "
            f"{f(row['tp'], 7, 0)} {f(row['tp_ratio'], 5, 2)} {f(row['rss'], 6, 2)} "
            f"{f(row['relay'], 6)} {f(row['worker'], 6)}"
        )
    print(
        "goals: add50 <= 0.75, add99 <= 1.50, start <= 100 ms, 4cl/s vs socat >= 1.00, "
        f"rss < 5 MiB over {args.rss_commands} commands; took {time.monotonic() - t_begin:.0f} s"
    )
    print(f"capture cost, CPU µs per round trip: socat {socat_us:.1f}; relay + worker:", end="")
    for s in setups:
        if s in table and table[s]["worker"] == table[s]["worker"]:
            both = table[s]["relay"] + table[s]["worker"]
            table[s]["cpu_ratio"] = both / socat_us
            print(f" {s.removeprefix('tpmsniff ')} {both:.1f} ({both / socat_us:.2f}x)", end="")
    print("; goal <= 3.00x socat")
    startstop_table = {}
    if args.ss_runs > 0:
        startstop_table = startstop.measure(args.ss_runs, args.ss_cycles)
        startstop.print_table(startstop_table, args.ss_runs, args.ss_cycles)
    hog = {}
    if args.hog_seconds > 0:
        from hog import hog_table

        hog = hog_table(Path(tempfile.mkdtemp(prefix="tpmsniff-hog-")), args.hog_seconds)
    off = {} if args.no_offline else offline(args.offline_copies, args.offline_files)
    if args.json:
        out = {"table": table, "raw": res, "offline": off, "startstop": startstop_table, "hog": hog}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
