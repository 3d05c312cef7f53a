"""Reading with SCM_RIGHTS: recvmsg with room for fds, which asyncio's streams lack.

Every read of a Unix socket that may carry an fd (QEMU's control channel, and the first
read of any connection in auto mode) goes through `recv_with_fds`, so none is dropped.
"""

from __future__ import annotations

import array
import asyncio
import socket

import structlog

log = structlog.get_logger("tpmsniff.qemu")
MAX_FDS = 4


async def wait_fd(fd: int, write: bool = False) -> None:
    """Wait until fd is readable (or writable): for recvmsg/sendmsg, which asyncio lacks."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, ready)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def recv_with_fds(sock: socket.socket, n: int = 65536) -> tuple[bytes, list[int]]:
    """recvmsg on a non-blocking socket, returning data and any SCM_RIGHTS fds."""
    while True:
        try:
            if sock.family != socket.AF_UNIX:
                return sock.recv(n), []
            data, anc, flags, _ = sock.recvmsg(
                n, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
            break
        except BlockingIOError:
            await wait_fd(sock.fileno())
    fds = array.array("i")
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        log.warning("control message truncated: an fd was dropped by the kernel")
    return data, list(fds)
