"""The in-process pipeline: annotate events and fan frames out to the sinks.

Live, the relay hands records over *after* forwarding the bytes; they are queued and
drained by a callback scheduled on the event loop, so decoding and sink I/O never sit
between a read and the matching write. A failing decoder or sink becomes one log event;
it never propagates into the relay, and a broken sink does not stop the others.

Offline (`deferred=False`) the same object is a `FrameConsumer` that the replay driver
feeds with frames already annotated.

The decoder (tpm2-pytss, the slow import) is made when the first message needs it, from
`make_annotator`: a capture worker can take connection records, and be stopped, while it
is still importing (preload() imports it on a thread meanwhile).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import structlog

from ..model import ConnInfo, Event, Frame, FrameConsumer
from ..model.exits import EXIT_CAPTURE_LOST, combine
from .records import Closed, Control, Opened, Record, Relayed, decode_stream

if TYPE_CHECKING:
    from ..codec.annotate import Annotator

log = structlog.get_logger("tpmsniff.pipeline")


def _nothing() -> None:
    pass


def default_annotator() -> Annotator:
    from ..codec.annotate import Annotator

    return Annotator()


def preload() -> threading.Thread:
    """Import the decoder on a thread, so it is (nearly) ready when the first message
    comes; whoever needs it first waits for the import lock, never imports twice."""

    def load() -> None:
        try:
            import tpmsniff.codec.annotate  # noqa: F401
        except Exception as exc:  # the first message says it again, where it matters
            log.debug("decoder preload failed", error=repr(exc))

    t = threading.Thread(target=load, name="decoder-import", daemon=True)
    t.start()
    return t


class InProcessPipeline:
    def __init__(
        self,
        sinks: Iterable[FrameConsumer] = (),
        annotator: Annotator | None = None,
        *,
        deferred: bool = True,
        make_annotator: Callable[[], Annotator] = default_annotator,
    ) -> None:
        self.sinks: list[FrameConsumer] = list(sinks)
        self._annotator = annotator
        self._make_annotator = make_annotator
        self._deferred = deferred  # False: process at once (worker process, offline)
        self._todo: deque[Record] = deque()
        self._scheduled = False
        self._broken: set[int] = set()
        self._frames = 0
        # Backpressure interface shared with WorkerPipeline; in-process work is never queued.
        self.congested = False
        self.pressure_listeners: list[Callable[[bool], None]] = []

    @property
    def frames_seen(self) -> int:
        return self._frames

    @property
    def annotator(self) -> Annotator:
        """The decoder, made (imported) on first use."""
        if self._annotator is None:
            self._annotator = self._make_annotator()
        return self._annotator

    # -- EventSink: called by the transport (cheap) ------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        self.push(Opened(info))

    def events(
        self, conn: int, ts: float, events: Sequence[Event], number: int | None = None
    ) -> None:
        for ev in events:
            self.push(Relayed(conn, ts, ev, number))

    def conn_close(self, conn: int, ts: float) -> None:
        self.push(Closed(conn, ts))

    async def started(self) -> None:
        """Outputs are open as soon as this object exists."""

    def encoded(self, data: bytes, frames: int) -> None:
        """Records already encoded with their length prefixes (the native relay's)."""
        for rec in decode_stream(data):
            self.push(rec)

    def push(self, rec: Record) -> None:
        self._todo.append(rec)
        if not self._deferred:
            self.drain()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    # -- the deferred part ---------------------------------------------------------
    def drain(self) -> None:
        self._scheduled = False
        todo = self._todo
        while todo:
            rec = todo.popleft()
            if isinstance(rec, Relayed):
                self._annotate(rec)
            elif isinstance(rec, Opened):
                self._opened(rec.info)
            elif isinstance(rec, Closed):
                self._closed(rec.conn, rec.ts)
            else:
                self._control(rec.what)
        if self._deferred:  # a batch from the event loop: out to the files at once
            self.flush()

    def flush(self) -> None:
        """Let every sink write what it buffered (the worker calls this after each batch
        it reads; sinks without a buffer need not have the method)."""
        self._each(lambda s: getattr(s, "flush", _nothing)())

    def _opened(self, info: ConnInfo) -> None:
        self._each(lambda s: s.conn_open(info))

    def _closed(self, conn: int, ts: float) -> None:
        if self._annotator is not None:  # no decoder yet: it holds nothing of conn
            self._annotator.close(conn)
        self._each(lambda s: s.conn_close(conn, ts))

    def _control(self, what: str) -> None:
        self._each(lambda s: s.control(what))

    def _annotate(self, rec: Relayed) -> None:
        try:
            frame = self.annotator.annotate(rec.conn, rec.ts, rec.event, rec.number)
        except Exception as exc:  # a decoder bug must not stop the capture
            log.error("annotate failed", conn=rec.conn, error=repr(exc))
            return
        self.frame(frame)

    def _each(self, call: Callable[[FrameConsumer], object]) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                call(sink)
            except Exception as exc:
                if i not in self._broken:
                    self._broken.add(i)
                    log.error("sink failed", sink=type(sink).__name__, error=repr(exc))

    # -- FrameConsumer: frames annotated elsewhere (the replay driver) ---------------
    def frame(self, f: Frame) -> None:
        self._frames += 1
        self._each(lambda s: s.frame(f))

    def control(self, what: str) -> None:
        """Pass an out-of-band request (e.g. "reopen" on SIGHUP) to every sink, in order
        with the records before it."""
        self.push(Control(what))
        self.drain()
        self.flush()

    @property
    def exit_code(self) -> int:
        """A check's violation (1) first; a sink that failed means outputs were lost (4)."""
        lost = EXIT_CAPTURE_LOST if self._broken else 0
        return combine(lost, *(s.exit_code for s in self.sinks))

    def close(self, cut: bool = False) -> int:
        """Everything queued is written (in-process there is no backlog to cut)."""
        self.drain()
        self._each(lambda s: s.close())
        return self.exit_code
