"""The two interfaces every layer meets at, as structural protocols.

`EventSink` is what a producer of framed messages needs (the relay, the offline replay
driver); `FrameConsumer` is what a sink implements. They live here, in the layer that
imports nothing, so that producers and consumers never import each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .events import ConnInfo, Event
from .frame import Frame


class FrameConsumer(Protocol):
    """An independent consumer of annotated frames (console, pcapng, JSON Lines, check).

    `exit_code` is non-zero when the consumer judges the run failed (a live check)."""

    @property
    def exit_code(self) -> int: ...

    def conn_open(self, info: ConnInfo) -> None: ...

    def frame(self, f: Frame) -> None: ...

    def conn_close(self, conn: int, ts: float) -> None: ...

    def control(self, what: str) -> None: ...

    def close(self) -> object:
        """Flush and release; whatever it returns is ignored."""
        ...


class EventSink(Protocol):
    """Where framed messages go after they were relayed (or read from a file).

    `congested` and `pressure_listeners` carry backpressure back to the producer: while
    congested, the relay stops reading its clients.
    """

    congested: bool
    pressure_listeners: list[Callable[[bool], None]]

    def conn_open(self, info: ConnInfo) -> None: ...

    def events(
        self, conn: int, ts: float, events: Sequence[Event], number: int | None = None
    ) -> None: ...

    def conn_close(self, conn: int, ts: float) -> None: ...
