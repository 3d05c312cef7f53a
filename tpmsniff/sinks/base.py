"""The sink interface: independent consumers of the frame stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..model import Channel, Frame


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """A proxied connection as sinks see it."""

    conn: int
    channel: Channel
    peer: str  # client description, e.g. "unix:/run/x.sock" or "127.0.0.1:40112"
    upstream: str
    ts: float


class Sink(Protocol):
    def conn_open(self, info: ConnInfo) -> None: ...

    def frame(self, f: Frame) -> None: ...

    def conn_close(self, conn: int, ts: float) -> None: ...

    def control(self, what: str) -> None: ...

    def close(self) -> None: ...


class BaseSink:
    """No-op defaults so a sink implements only what it needs."""

    def conn_open(self, info: ConnInfo) -> None:
        pass

    def frame(self, f: Frame) -> None:
        pass

    def conn_close(self, conn: int, ts: float) -> None:
        pass

    def control(self, what: str) -> None:
        pass

    def close(self) -> None:
        pass
