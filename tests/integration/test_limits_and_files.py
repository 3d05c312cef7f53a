"""Resource limits and file safety: no client, input or file can stop the daemon or turn
it against its host.

Real swtpm, tpmsniff as a process; fds and RSS read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    connect,
    fds,
    recv_exact,
    rss_kib,
    start_sniff,
    start_swtpm,
    tiny_tmpfs,
    tpmsniff_cmd,
    wait_for,
)

from tpmsniff.inputs.swtpmlog import parse_file

pytestmark = pytest.mark.integration

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


# -- helpers -------------------------------------------------------------------------
def nofile(n: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return set_limit


def getrandom(addr: str) -> bytes:
    with connect(addr) as s:
        s.sendall(GETRANDOM)
        head = recv_exact(s, 10)
        return head + recv_exact(s, int.from_bytes(head[2:6], "big") - 10)


def served(addr: str) -> bool:
    """A GetRandom gets a success response (False if the connection was refused)."""
    try:
        return getrandom(addr)[6:10] == b"\0\0\0\0"
    except (OSError, EOFError):
        return False


def ctrl_roundtrip(addr: str, code: int) -> bytes:
    with connect(addr) as s:
        s.sendall(code.to_bytes(4, "big"))
        return recv_exact(s, 4)


def events(sniff, name: str) -> list[dict]:
    return [e for e in sniff.log_events() if e.get("event", "").startswith(name)]


def no_traceback(sniff) -> None:
    text = sniff.stderr.read_text()
    assert "Traceback" not in text and '"raw"' not in str(sniff.log_events()), text[-2000:]


def worker_pid(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


# -- 1. accepting never stops --------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "qemu", "swtpm"])
def test_fd_exhaustion_does_not_stop_accepting(tmp_path, mode):
    """Under `ulimit -n 48`, 80 idle connections exhaust the daemon's fds; once they
    close, clients are served again and the fd count is back to its baseline."""
    sw = start_swtpm(tmp_path, "unix")
    upstream = sw.ctrl if mode == "qemu" else sw.data
    sniff = start_sniff(
        tmp_path,
        upstream,
        extra=["--mode", mode, "--console", "none", "--listen-ctrl", "none"],
        preexec=nofile(48),
    )
    pid = sniff.proc.pid

    def ok() -> bool:
        if mode != "qemu":
            return served(sniff.listen)
        try:
            return ctrl_roundtrip(sniff.listen, 0x0F)[:4] == b"\0\0\0\0"  # GET_CONFIG
        except (OSError, EOFError):
            return False

    try:
        assert ok()
        base = fds(pid)
        idle = []
        for _ in range(80):
            try:
                idle.append(connect(sniff.listen, timeout=2))
            except OSError:
                break
        if mode != "swtpm":  # our own loop logs it; asyncio's server has its own back-off
            wait_for(lambda: events(sniff, "accept failed"), 20, "an accept error")
        for s in idle:
            s.close()
        wait_for(lambda: fds(pid) <= base, 30, f"fds back to {base}")
        # swtpm may still be draining the storm from its own backlog: wait for it
        wait_for(ok, 30, "a client served after the storm")
        assert ok()
    finally:
        code = sniff.stop()
        sw.stop()
    assert code == 0
    no_traceback(sniff)
    if mode != "swtpm":
        assert len(events(sniff, "accept failed")) <= 3  # rate-limited, not one per try


@pytest.mark.parametrize("mode", ["auto", "swtpm"])
def test_max_connections_closes_the_excess_at_once(tmp_path, mode):
    sw = start_swtpm(tmp_path, "tcp")
    sniff = start_sniff(
        tmp_path,
        sw.data,
        extra=["--mode", mode, "--console", "none", "--max-connections", "3"],
    )
    try:
        # start_sniff's probe and this client must be gone before we count
        getrandom(sniff.listen)
        closed = 2 if mode == "swtpm" else 1
        wait_for(lambda: len(events(sniff, "connection closed")) >= closed, 10, "idle")
        base = fds(sniff.proc.pid)
        held = [connect(sniff.listen) for _ in range(3)]
        wait_for(lambda: fds(sniff.proc.pid) >= base + 3, 10, "three clients held")
        extra = [connect(sniff.listen) for _ in range(5)]
        for s in extra:
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""  # closed at once, nothing relayed
            s.close()
        for s in held:
            s.close()
        wait_for(lambda: served(sniff.listen), 10, "served again")
    finally:
        code = sniff.stop()
        sw.stop()
    assert code == 0
    refused = events(sniff, "connection limit reached")
    assert 1 <= len(refused) <= 2 and refused[0]["limit"] == 3
    no_traceback(sniff)


# -- 2. bounded per connection, within a read ------------------------------------------
def test_client_that_never_reads_holds_only_its_own_connection(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "none", "--mode", "swtpm"])
    pid = sniff.proc.pid
    try:
        getrandom(sniff.listen)
        rss0 = rss_kib(pid)
        hog = connect(sniff.listen)
        hog.setblocking(False)
        sent = 0
        burst = GETRANDOM * 5000  # 60 KB per write
        deadline = time.monotonic() + 30
        while sent < 8 << 20 and time.monotonic() < deadline:
            try:
                sent += hog.send(burst)
            except BlockingIOError:
                break  # the kernel is full: tpmsniff stopped reading this client
        grew = rss_kib(pid) - rss0
        hog.close()
        t0 = time.monotonic()
        rsp = getrandom(sniff.listen)
        latency = time.monotonic() - t0
        # swtpm logs a command before it answers: the log is complete up to here
        cmds = [m for m in parse_file(str(sw.log)) if m.kind == "tpm-cmd"]
        # a second hog is still connected, with unread responses, when SIGTERM comes:
        # the daemon stops all the same (issue 10: it did not within 15 s)
        hog2 = connect(sniff.listen)
        hog2.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(100):
                hog2.send(burst)
    finally:
        code = sniff.stop()
        sw.stop()
    assert rsp[6:10] == b"\0\0\0\0" and code == 0
    # swtpm saw each command alone (never coalesced), and only a small part of what the
    # hog sent: the rest stayed in the kernel and went away with it
    assert all(m.data == GETRANDOM for m in cmds)
    assert len(cmds) < sent // len(GETRANDOM) // 4
    print(
        f"hog sent {sent} B, swtpm got {len(cmds)} commands, RSS +{grew} KiB, next {latency:.3f}s"
    )
    assert grew < 20 << 10  # KiB: nothing like the 25 MB of issue 10
    no_traceback(sniff)


@pytest.mark.parametrize("relay", ["python", "native"])
def test_queued_requests_go_one_at_a_time_after_client_eof(tmp_path, relay):
    sw = start_swtpm(tmp_path, "tcp")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "none", "--relay", relay])
    try:
        with connect(sniff.listen) as s:
            # one write, then EOF (a half-close: the client still reads; a full close with
            # responses unread is a reset, which releases swtpm at once: protocols.md)
            s.sendall(GETRANDOM * 6)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert len(got) == 6 * 28  # six GetRandom(16) responses, then EOF
        wait_for(
            lambda: len([m for m in parse_file(str(sw.log)) if m.kind == "tpm-rsp"]) >= 6,
            10,
            "six responses in swtpm's log",
        )
    finally:
        code = sniff.stop()
        sw.stop()
    cmds = [m.data for m in parse_file(str(sw.log)) if m.kind == "tpm-cmd"]
    assert cmds == [GETRANDOM] * 6 and code == 0  # six reads of one command each


# -- 3. every value of every field -----------------------------------------------------
@pytest.mark.parametrize("mode", ["qemu", "ctrl"])
def test_control_code_with_high_bit_end_to_end(tmp_path, mode):
    """0x80000001 and 0xffffffff: the client gets swtpm's reply, no traceback, the
    session is removed (stop is prompt), the capture holds both messages."""
    sw = start_swtpm(tmp_path, "unix")
    if mode == "qemu":
        sniff = start_sniff(tmp_path, sw.ctrl, extra=["--mode", "qemu", "--console", "summary"])
        listen = sniff.listen
    else:
        sniff = start_sniff(tmp_path, sw.data, extra=["--console", "summary"])
        listen = sniff.listen + ".ctrl"
    try:
        for code in (0x80000001, 0xFFFFFFFF, 0x7FFFFFFF):
            assert ctrl_roundtrip(listen, code) == b"\0\0\0\x0a"  # swtpm: TPM_BAD_ORDINAL
        wait_for(lambda: not events(sniff, "connection opened") or True, 1)
        if mode == "qemu":
            wait_for(lambda: len(events(sniff, "qemu control channel closed")) == 3, 10, "closed")
        else:
            wait_for(lambda: len(events(sniff, "connection closed")) == 3, 10, "closed")
        t0 = time.monotonic()
        sniff.proc.send_signal(signal.SIGTERM)
        sniff.proc.wait(30)
        stop_took = time.monotonic() - t0
    finally:
        code = sniff.stop()
        sw.stop()
    assert code == 0
    no_traceback(sniff)
    assert not [e for e in sniff.log_events() if e.get("level") in ("error", "critical")]
    assert not events(sniff, "stopping")[0]["busy"]  # nothing left behind to wait for
    console = sniff.console()
    assert "CTRL_0x80000001" in console and "CTRL_0xffffffff" in console
    print(f"stop took {stop_took:.2f}s")


# -- 4. safe files ---------------------------------------------------------------------
def _start_fails(tmp_path, sw, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [*tpmsniff_cmd(), "--listen", str(tmp_path / "l.sock"), "--upstream", sw.data, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert p.returncode == 3, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    return p


@pytest.mark.parametrize("opt", ["--pcap", "--jsonl"])
def test_symlink_fifo_and_foreign_files_are_refused(tmp_path, opt):
    sw = start_swtpm(tmp_path, "unix")
    try:
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        link = tmp_path / "out.link"
        link.symlink_to(victim)
        assert "symbolic link" in _start_fails(tmp_path, sw, opt, str(link)).stderr
        assert victim.read_bytes() == b"precious"
        if opt == "--jsonl":  # `--pcap FIFO` is a live stream (docs/usage.md)
            fifo = tmp_path / "fifo"
            os.mkfifo(fifo)
            _start_fails(tmp_path, sw, opt, str(fifo))  # no reader: refused (ENXIO) all the same
        assert "not a regular file" in _start_fails(tmp_path, sw, opt, "/dev/full").stderr
        foreign = tmp_path / "foreign"
        foreign.write_bytes(b"theirs")
        os.chown(foreign, 65534, 65534)
        assert "another user" in _start_fails(tmp_path, sw, opt, str(foreign)).stderr
        assert foreign.read_bytes() == b"theirs"
    finally:
        sw.stop()


def test_existing_outputs_become_0600(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text("old\n")
    jsonl.chmod(0o644)
    sniff = start_sniff(tmp_path, sw.data, extra=["--jsonl", str(jsonl), "--console", "none"])
    try:
        getrandom(sniff.listen)
        wait_for(lambda: len(jsonl.read_text().splitlines()) >= 2, 10, "jsonl written")
    finally:
        code = sniff.stop()
        sw.stop()
    assert code == 0
    for f in (jsonl, sniff.pcap):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert not jsonl.read_text().startswith("old")


# -- 5. exit codes tell the truth ---------------------------------------------------------
def test_capture_header_that_cannot_be_written_is_exit_3(tmp_path):
    with tiny_tmpfs(tmp_path) as small:
        sw = start_swtpm(tmp_path, "unix")
        try:
            with open(small / "filler", "wb") as fh, contextlib.suppress(OSError):
                fh.write(b"x" * (64 << 10))  # the disk is full before we start
            err = _start_fails(tmp_path, sw, "--pcap", str(small / "capture")).stderr
            assert "No space left on device" in err and "capture" in err
        finally:
            sw.stop()


def test_killed_worker_relay_goes_on_exit_4(tmp_path):
    sw = start_swtpm(tmp_path, "unix")
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "none"])
    try:
        assert getrandom(sniff.listen)[6:10] == b"\0\0\0\0"
        os.kill(worker_pid(sniff.proc.pid), signal.SIGKILL)
        for _ in range(5):  # the relay goes on without its capture
            assert getrandom(sniff.listen)[6:10] == b"\0\0\0\0"
        wait_for(lambda: events(sniff, "capture worker exited"), 10, "the loss logged")
    finally:
        code = sniff.stop()
        sw.stop()
    assert code == 4  # not 1 (violation), not 247 (a signal's status)
    assert len(events(sniff, "capture worker exited")) == 1
    no_traceback(sniff)
