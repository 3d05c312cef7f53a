"""Scripted raw TPM clients for the end-of-stream policy (docs/protocols.md, "End of
stream"): the same script is played against swtpm directly and through each relay, and
what each end saw is compared (tests/integration/test_relay_differential.py).

A script is a list of steps; the client records every byte it receives and how its
connection ended, and swtpm's log says which commands it executed.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from tpmsniff.inputs.swtpmlog import parse_file

# deterministic commands (a fresh swtpm answers them the same every time)
GETCAP = bytes.fromhex("8001000000160000017a000000060000010000000001")  # TPM_PT_FAMILY_INDICATOR
PCRREAD = bytes.fromhex("80010000001400000017" + "00000001000b03010000")  # sha256 PCR 0
GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


@dataclass
class Outcome:
    received: bytes = b""
    end: str = "open"  # how the client's connection ended: "eof", "reset", "open"
    unread: int = 0  # response bytes that had arrived, unread, when the client left
    log: list[str] = field(default_factory=list)


def _connect(addr: str) -> socket.socket:
    if addr.startswith("tcp:"):
        host, port = addr[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(addr)
    return s


def response_length(buf: bytes) -> int | None:
    """Length of the whole response at the start of buf, or None if it is not all there."""
    if len(buf) < 6:
        return None
    n = int.from_bytes(buf[2:6], "big")
    return n if len(buf) >= n else None


def _read_responses(s: socket.socket, out: Outcome, n: int) -> None:
    start = len(out.received)
    got = 0
    while got < n:
        pos = start
        got = 0
        while (k := response_length(out.received[pos:])) is not None:
            pos += k
            got += 1
        if got >= n:
            return
        chunk = s.recv(65536)
        if not chunk:
            out.end = "eof"
            return
        out.received += chunk


def _read_to_end(s: socket.socket, out: Outcome, timeout: float) -> None:
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                out.end = "eof"
                return
            out.received += chunk
    except TimeoutError:
        out.end = "open"
    except ConnectionResetError:
        out.end = "reset"


def play(addr: str, script: list[tuple], timeout: float = 5.0) -> Outcome:
    """Run `script` as one client of addr. Steps:
    ("send", bytes)        one write
    ("chunks", bytes, n)   the bytes in n-byte writes (each consumed before the next)
    ("responses", n)       read until n more whole responses arrived
    ("shut_wr",)           half-close (shutdown of the write side)
    ("close",)             close (a reset, if responses arrived unread); then only "call"
    ("reset",)             close with SO_LINGER 0: a reset; then only "call"
    ("call", f)            f() (e.g. wait until swtpm has answered: a stall)
    ("to_end",)            read until EOF, a reset, or `timeout` (then "open")
    """
    out = Outcome()
    s = _connect(addr)
    try:
        for step in script:
            op = step[0]
            if op == "send":
                s.sendall(step[1])
            elif op == "chunks":
                data, n = step[1], step[2]
                for i in range(0, len(data), n):
                    s.sendall(data[i : i + n])
                    wait_sent(s)
            elif op == "responses":
                _read_responses(s, out, step[1])
            elif op == "shut_wr":
                s.shutdown(socket.SHUT_WR)
            elif op == "close":
                out.unread = _unread(s)
                s.close()
            elif op == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                out.unread = _unread(s)
                s.close()
            elif op == "call":
                step[1]()
            elif op == "to_end":
                _read_to_end(s, out, timeout)
            else:
                raise ValueError(op)
    finally:
        with contextlib.suppress(OSError):
            s.close()
    return out


def _unread(s: socket.socket) -> int:
    import fcntl
    import termios

    return int.from_bytes(fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")


def wait_sent(s: socket.socket, timeout: float = 5.0) -> None:
    """Until the peer has read what s sent (its send queue is empty): an event, not a sleep."""
    import fcntl
    import termios

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf = fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        if int.from_bytes(buf, "little") == 0:
            return
        time.sleep(0.001)
    raise TimeoutError("the peer did not read")


def executed(log: Path) -> list[str]:
    """The commands swtpm read, in order, as hex (its --log level>=2 dumps)."""
    return [m.data.hex() for m in parse_file(str(log)) if m.kind == "tpm-cmd"]


def served_within(addr: str, timeout: float) -> float:
    """One GetCapability round trip as a new client; its time in seconds (swtpm serves one
    connection at a time, so this also says the previous one is over at swtpm)."""
    t = time.monotonic()
    out = play(addr, [("send", GETCAP), ("responses", 1)], timeout)
    dt = time.monotonic() - t
    assert response_length(out.received) == len(out.received) > 10, out
    assert dt < timeout
    return dt
