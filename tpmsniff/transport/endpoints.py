"""Listen and upstream endpoints: checks before relaying starts, and the one way every
relay path (Python data and control, QEMU control, the native relay) connects upstream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from typing import Any

from .addresses import Address
from .errors import StartupError


def check_unix_upstream(addr: Address) -> None:
    """Fail fast if a Unix upstream is not there. No connect: a swtpm with
    `--ctrl ...,terminate` would exit when the probe connection closed."""
    try:
        st = os.stat(addr.path)
    except OSError as exc:
        raise StartupError(f"upstream {addr}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"upstream {addr}: not a socket")


async def check_upstream(addr: Address, timeout: float = 3.0) -> None:
    if addr.kind == "unix":
        check_unix_upstream(addr)
        return
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), timeout)
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or "timed out"
        raise StartupError(f"upstream {addr}: {why}") from None
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()


def prepare_unix_path(path: str) -> None:
    """Remove a stale socket file; refuse a live socket or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"listen unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise StartupError(f"listen unix:{path}: address already in use")


async def connect_upstream(addr: Address) -> socket.socket:
    """A non-blocking socket connected to `addr` (TCP with TCP_NODELAY: the relay forwards
    each piece as it comes, so Nagle must not hold it back). Raises OSError."""
    loop = asyncio.get_running_loop()
    if addr.kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = addr.path
    else:
        s = socket.socket(socket.AF_INET6 if ":" in addr.host else socket.AF_INET)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (addr.host, addr.port)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, target)
    except BaseException:
        s.close()
        raise
    return s
