"""Frame pipeline: the relay hands events over here *after* forwarding the bytes.

Work is queued and drained by a callback scheduled on the event loop, so decoding and
sink I/O never sit between a read and the matching write. A failing decoder or sink
becomes a log event; it never propagates into the relay.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

import structlog

from .annotate import Annotator
from .channels import Event
from .model import Frame
from .sinks.base import ConnInfo, Sink

log = structlog.get_logger("tpmsniff.pipeline")


class Pipeline:
    def __init__(
        self,
        sinks: Iterable[Sink] = (),
        annotator: Annotator | None = None,
        *,
        deferred: bool = True,
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        self.annotator = annotator or Annotator()
        self._deferred = deferred  # False: process at once (worker process, offline)
        self._todo: deque[tuple] = deque()
        self._scheduled = False
        self._broken: set[int] = set()
        self.frames_seen = 0
        # Backpressure interface shared with WorkerPipeline; in-process work is never queued.
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []
        self.listeners: list[Callable[[Frame], None]] = []

    # -- called by the transport (cheap) -------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        self._push(("open", info))

    def events(self, conn: int, ts: float, events: list[Event]) -> None:
        if events:
            self._push(("events", conn, ts, events))

    def conn_close(self, conn: int, ts: float, events: list[Event] | None = None) -> None:
        if events:
            self._push(("events", conn, ts, events))
        self._push(("close", conn, ts))

    def _push(self, item: tuple) -> None:
        self._todo.append(item)
        if not self._deferred:
            self.drain()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    # -- the deferred part ----------------------------------------------------
    def drain(self) -> None:
        self._scheduled = False
        todo = self._todo
        while todo:
            item = todo.popleft()
            kind = item[0]
            if kind == "events":
                _, conn, ts, events = item
                for ev in events:
                    self._frame(conn, ts, ev)
            elif kind == "open":
                self._each(lambda s, i=item[1]: s.conn_open(i))
            else:
                _, conn, ts = item
                self.annotator.close(conn)
                self._each(lambda s, c=conn, t=ts: s.conn_close(c, t))

    def _frame(self, conn: int, ts: float, ev: Event) -> None:
        try:
            frame = self.annotator.annotate(conn, ts, ev)
        except Exception as exc:  # a decoder bug must not stop the capture
            log.error("annotate failed", conn=conn, error=repr(exc))
            return
        self.frames_seen += 1
        self._each(lambda s: s.frame(frame))
        for cb in self.listeners:
            cb(frame)

    def _each(self, call: Callable[[Sink], None]) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                call(sink)
            except Exception as exc:
                if i not in self._broken:
                    self._broken.add(i)
                    log.error("sink failed", sink=type(sink).__name__, error=repr(exc))

    def control(self, what: str) -> None:
        """Pass an out-of-band request (e.g. "reopen" on SIGHUP) to every sink."""
        self.drain()
        self._each(lambda s: s.control(what))

    def exit_code(self) -> int:
        """Non-zero if a sink or check says the run failed (e.g. a live secret check)."""
        return max((getattr(s, "exit_code", 0) for s in self.sinks), default=0)

    def close(self) -> int:
        self.drain()
        self._each(lambda s: s.close())
        return self.exit_code()
