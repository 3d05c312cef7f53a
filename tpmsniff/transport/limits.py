"""What keeps a hostile client (or a buggy decoder) from turning the relay against its
host: rate-limited logging, and a guard that keeps exceptions out of relay callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("tpmsniff.relay")

LOG_INTERVAL = 10.0  # s: a repeated condition is logged at most once per interval


class RateLimited:
    """One log line per burst: the first event, then at most one per LOG_INTERVAL with
    the number of events suppressed since."""

    def __init__(self, logger: Any, event: str, interval: float = LOG_INTERVAL) -> None:
        self.logger = logger
        self.event = event
        self.interval = interval
        self.count = 0  # every occurrence, logged or not
        self._last = -interval
        self._suppressed = 0

    def _emit(self, level: str, kw: dict[str, Any]) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            kw["suppressed"] = self._suppressed
        self._last, self._suppressed = now, 0
        getattr(self.logger, level)(self.event, **kw)

    def warning(self, **kw: Any) -> None:
        self._emit("warning", kw)

    def error(self, **kw: Any) -> None:
        self._emit("error", kw)


_pipeline_errors = RateLimited(log, "capture pipeline error; relay goes on")


def guarded(call: Callable[[], object]) -> None:
    """Run a hand-over to the pipeline; whatever it raises is logged (rate-limited) and
    stays out of the relay callback that called it."""
    try:
        call()
    except Exception as exc:
        _pipeline_errors.error(error=repr(exc))
