"""systemd socket activation (sd_listen_fds): listening sockets passed as fds 3.. with
LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES, so a client can connect before tpmsniff runs and a
restart loses no connection attempt (the socket stays open in systemd meanwhile).

A socket's name (FileDescriptorName= in the .socket unit, --fdname of
systemd-socket-activate) says what it is for: "ctrl" is the swtpm TCTI's control channel,
"qemu" and "swtpm" force --mode for that listener; any other name is a main listener with
--mode.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from .addresses import Address
from .errors import StartupError

SD_LISTEN_FDS_START = 3
MAX_PASSED = 64  # more than any unit needs; a bigger LISTEN_FDS is a mistake, not a plan
ROLE_NAMES = ("ctrl", "qemu", "swtpm")


@dataclass(frozen=True, slots=True)
class Passed:
    sock: socket.socket
    name: str  # "" when systemd gave none
    address: Address  # where it listens (for logs and the control channel's companion)
    role: str | None  # "ctrl", "qemu", "swtpm", or None (a main listener, --mode decides)


def passed_sockets(env: MutableMapping[str, str] | None = None) -> list[Passed]:
    """The listening sockets systemd passed to this process ([] without LISTEN_FDS, or when
    they were meant for another process). Unsets the variables, as sd_listen_fds(1) does,
    so nothing started later takes them for its own. Raises StartupError for fds that are
    not listening stream sockets."""
    env = os.environ if env is None else env
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not count or count == "0":
        return []
    if not pid.isdecimal() or int(pid) != os.getpid():
        return []
    if not count.isdecimal() or not 0 < int(count) <= MAX_PASSED:
        raise StartupError(f"LISTEN_FDS={count!r}: expected 1 to {MAX_PASSED} sockets")
    n = int(count)
    labels = names.split(":") if names else []
    labels += [""] * (n - len(labels))
    return _roles([_adopt(SD_LISTEN_FDS_START + i, labels[i]) for i in range(n)])


def _roles(passed: list[Passed]) -> list[Passed]:
    """A socket with no role name that listens at another's companion (PORT+1, PATH.ctrl)
    is that one's control channel: `-l HOST:PORT -l HOST:PORT+1` needs no --fdname."""
    mains = {p.address for p in passed if p.role is None}
    out = []
    for p in passed:
        if p.role is None and any(_companion(m) == p.address for m in mains - {p.address}):
            p = Passed(p.sock, p.name, p.address, "ctrl")
        out.append(p)
    return out


def _companion(a: Address) -> Address | None:
    try:
        return a.companion()
    except ValueError:
        return None


def _adopt(fd: int, name: str) -> Passed:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"passed fd {fd}: not a socket ({exc.strerror or exc})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            raise StartupError(
                f"passed fd {fd} ({name or 'unnamed'}): not a listening stream socket"
            )
        if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
            raise StartupError(f"passed fd {fd}: unsupported socket family {sock.family!r}")
    except BaseException:
        sock.detach()  # not ours to close: leave the fd as systemd gave it
        raise
    sock.set_inheritable(False)
    sock.setblocking(False)
    return Passed(sock, name, _address(sock), name if name in ROLE_NAMES else None)


def _address(sock: socket.socket) -> Address:
    where = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = where.decode(errors="replace") if isinstance(where, bytes) else where
        return Address("unix", path=path.replace("\0", "@", 1) if path.startswith("\0") else path)
    return Address("tcp", host=where[0], port=where[1])
