"""systemd readiness (sd_notify): READY=1 once listening, STOPPING=1 on shutdown.

A no-op without $NOTIFY_SOCKET, so tpmsniff behaves the same outside systemd.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("tpmsniff.notify")


def notify(state: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed", state=state, error=exc.strerror or str(exc))
        return False
    return True
