"""Opening the files tpmsniff writes (captures, JSON Lines, reports) without being turned
against its host: no symlink is followed, only a regular file of our own is written, and
it is 0600 on the open fd whatever the umask or its old mode (docs/threat-model.md).

Part of the bottom layer with `model/`: it imports nothing of tpmsniff's.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable


class UnsafeFile(OSError):
    """A path tpmsniff refuses to write: the message is the one line the user sees."""


def open_private(path: str, *, append: bool = False) -> int:
    """Open `path` for writing (created 0600, truncated unless `append`) and return the fd.

    Raises UnsafeFile if the path is a symlink, not a regular file, or belongs to another
    user; OSError for anything else the kernel refuses. Truncation happens only after
    those checks, so a refused file is never damaged."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if append:
        flags |= os.O_APPEND
    fd = _open_own(path, flags, stat.S_ISREG, "a regular file")
    try:
        os.fchmod(fd, 0o600)
        if not append:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_own(path: str, flags: int, kind: Callable[[int], bool], what: str) -> int:
    """open(2) without following a symlink; the fd only if it is `what` and ours."""
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, f"{path}: is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not kind(st.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{path}: not {what}")
        if st.st_uid != os.geteuid():
            raise UnsafeFile(errno.EPERM, f"{path}: belongs to another user")
    except BaseException:
        os.close(fd)
        raise
    return fd


STDOUT = "-"


def is_stream(path: str) -> bool:
    """`-` (standard output) or an existing named pipe: a live stream, not a file."""
    if path == STDOUT:
        return True
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False


def open_stream(path: str) -> int:
    """Open `-` (a duplicate of standard output) or a named pipe of our own for writing.

    The pipe is opened without following symlinks and must be a FIFO that belongs to us
    (UnsafeFile otherwise); the open waits for a reader, as a pipe's writer does."""
    if path == STDOUT:
        return os.dup(1)
    return _open_own(
        path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, stat.S_ISFIFO, "a named pipe"
    )


def describe(path: str, exc: OSError) -> str:
    """`PATH: reason` for an output that cannot be opened or written, in one line
    (an UnsafeFile's message already names the path)."""
    if isinstance(exc, UnsafeFile):
        return exc.strerror or str(exc)
    return f"{path}: {exc.strerror or exc}"
