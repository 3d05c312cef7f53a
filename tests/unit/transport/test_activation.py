"""The LISTEN_FDS parser: only sockets meant for this process, names mapped to roles,
PORT+1 recognised as the control channel, anything else one clear StartupError."""

from __future__ import annotations

import os
import socket

import pytest

from tpmsniff.transport.activation import passed_sockets
from tpmsniff.transport.errors import StartupError


@pytest.fixture
def at3():
    """Listening sockets dup'ed to fds 3, 4 as systemd passes them (restored after)."""
    saved = {fd: os.dup(fd) for fd in (3, 4) if _open(fd)}
    made = []

    def place(*socks: socket.socket) -> None:
        for i, s in enumerate(socks):
            os.dup2(s.fileno(), 3 + i)
            made.append(s)

    yield place
    for fd in (3, 4):
        if fd in saved:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
    for s in made:
        s.close()


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _tcp(port: int = 0) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_not_ours_or_absent():
    assert passed_sockets({}) == []
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert passed_sockets(env) == [] and env == {}  # unset, as sd_listen_fds(1) does


def test_tcp_pair_names_the_ctrl(at3):
    a = _tcp()
    port = a.getsockname()[1]
    try:
        b = _tcp(port + 1)
    except OSError:
        pytest.skip("port+1 taken")  # not a tool: a busy machine's port
    at3(a, b)
    got = passed_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"})
    assert [(p.address.port, p.role) for p in got] == [(port, None), (port + 1, "ctrl")]
    for p in got:
        p.sock.detach()


def test_names_and_unix(at3, tmp_path):
    u = socket.socket(socket.AF_UNIX)
    u.bind(str(tmp_path / "s"))
    u.listen()
    at3(u, _tcp())
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "qemu:other"}
    got = passed_sockets(env)
    assert got[0].role == "qemu" and got[0].address.path == str(tmp_path / "s")
    assert got[1].role is None and got[1].name == "other"
    for p in got:
        p.sock.detach()


@pytest.mark.parametrize("count", ["x", "-1", "65"])
def test_bad_count(count):
    with pytest.raises(StartupError, match="LISTEN_FDS"):
        passed_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count})


def test_not_listening_is_refused(at3):
    s = socket.socket()
    at3(s)
    with pytest.raises(StartupError, match="not a listening stream socket"):
        passed_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"})
