"""Nothing relayed is lost at stop (issue 18): after a flood, SIGTERM lets the capture
worker write every record it was sent, however long that takes, and the daemon exits 0;
only a second SIGTERM cuts that short, with exit 4 and one line giving the count."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

from conftest import start_sniff, start_swtpm, wait_for
from helpers.captured import tcp_segments
from helpers.groundtruth import log_sequence

from tpmsniff.model.exits import EXIT_CAPTURE_LOST, EXIT_OK

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")
WINDOW = 64  # requests a flooding client keeps outstanding


class Flood:
    """One client pipelining GetRandoms (up to WINDOW outstanding) until `stop()`, then
    reading every response still due."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sent = 0
        self.received = 0
        self.sending = True
        self.window = threading.Semaphore(WINDOW)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader.start()
        self.writer.start()

    def _write(self) -> None:
        while self.sending:
            if not self.window.acquire(timeout=0.1):
                continue
            try:
                self.sock.sendall(GETRANDOM)
            except OSError:
                return
            self.sent += 1

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 10 and len(buf) >= int.from_bytes(buf[2:6], "big"):
                buf = buf[int.from_bytes(buf[2:6], "big") :]
                self.received += 1
                self.window.release()

    def stop_sending(self) -> None:
        self.sending = False
        self.writer.join(10)

    def finish(self, timeout: float = 30) -> None:
        """Read until every response came or the relay closed the connection: at stop it
        reads no new request (docs/protocols.md, End of stream), so requests still in the
        kernel's queue are never relayed and never answered; what was relayed is answered."""
        wait_for(
            lambda: self.received >= self.sent or not self.reader.is_alive(),
            timeout,
            "every response or the relay's close",
        )
        self.sock.close()
        self.reader.join(10)


def captured(pcap: Path) -> tuple[list[bytes], list[bytes]]:
    """Commands and responses in the capture, in order (one message per segment)."""
    cmds: list[bytes] = []
    rsps: list[bytes] = []
    for s in tcp_segments(str(pcap)):
        (cmds if s.to_server else rsps).append(s.payload)
    return cmds, rsps


def logged(log: Path) -> tuple[list[bytes], list[bytes]]:
    seq = log_sequence(log)
    return [b for is_cmd, b in seq if is_cmd], [b for is_cmd, b in seq if not is_cmd]


def test_flooded_daemons_write_every_message_at_stop(tmp_path):
    """Four daemons, each flooded by one pipelining client against its own swtpm for
    about 2 s, then SIGTERM: every message each swtpm logged is in its capture, exit 0."""
    sws = [start_swtpm(tmp_path, "unix", f"sw{i}") for i in range(4)]
    sniffs = [start_sniff(tmp_path, sw.data, name=f"sniff{i}") for i, sw in enumerate(sws)]
    try:
        floods = [Flood(s.listen) for s in sniffs]
        time.sleep(2.0)  # the flood's length is what is measured: not waiting for an event
        for f in floods:
            f.stop_sending()
        for s in sniffs:
            s.proc.send_signal(signal.SIGTERM)
        for f in floods:
            f.finish()
        codes = [s.proc.wait(120) for s in sniffs]
    finally:
        for s in sniffs:
            s.stop()
        for sw in sws:
            sw.stop()
    assert codes == [EXIT_OK] * 4, [s.stderr.read_text()[-2000:] for s in sniffs]
    for f, s, sw in zip(floods, sniffs, sws, strict=True):
        cmds, rsps = logged(sw.log)
        assert len(rsps) == f.received > 1000
        cap_cmds, cap_rsps = captured(s.pcap)
        assert cap_rsps == rsps
        assert cap_cmds == cmds
        events = [e.get("event") for e in s.log_events()]
        assert "capture worker ended abnormally" not in events


def test_second_sigterm_cuts_a_slow_drain_with_exit_4_and_the_count(tmp_path):
    """The worker writes to a named pipe nobody reads (so its drain never ends): the first
    SIGTERM waits for it, the second cuts it, exit 4 and one line with the count."""
    sw = start_swtpm(tmp_path, "unix", "sw")
    fifo = tmp_path / "cap.pcapng"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    sniff = start_sniff(tmp_path, sw.data, pcap=False, extra=["--pcap", str(fifo)])
    try:
        flood = Flood(sniff.listen)
        wait_for(lambda: flood.received > 2000, 60, "a backlog")
        flood.stop_sending()
        sniff.proc.send_signal(signal.SIGTERM)
        flood.finish()
        wait_for(lambda: '"stopping"' in sniff.stderr.read_text(), 20, "the first stop")
        assert sniff.proc.poll() is None  # the drain cannot end: nobody reads the pipe
        sniff.proc.send_signal(signal.SIGTERM)
        code = sniff.proc.wait(30)
    finally:
        sniff.stop()
        os.close(reader)
        sw.stop()
    assert code == EXIT_CAPTURE_LOST
    cut = [e for e in sniff.log_events() if e.get("event", "").startswith("stop cut short")]
    assert len(cut) == 1, sniff.stderr.read_text()[-2000:]
    assert 0 < cut[0]["not_written"] <= 2 * flood.received
    events = [e.get("event") for e in sniff.log_events()]
    assert "capture worker ended abnormally" not in events
