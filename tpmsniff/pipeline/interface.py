"""The pipeline interface the daemon programs against; both implementations conform.

`InProcessPipeline` decodes and writes in the relay's own process (offline commands, the
pytest plugin, `--in-process`); `WorkerPipeline` ships records to a child process so the
relay never waits on a decoder or a disk.
"""

from __future__ import annotations

from typing import Protocol

from ..model import EventSink


class FramePipeline(EventSink, Protocol):
    """An `EventSink` that can also be steered and closed."""

    @property
    def frames_seen(self) -> int:
        """Messages handed over so far (annotated, or shipped to the worker)."""
        ...

    async def started(self) -> None:
        """Return once the outputs are open (a worker opens them after it forks)."""
        ...

    def encoded(self, data: bytes, frames: int) -> None:
        """Whole records already encoded (records.py, each with its u32 length prefix),
        holding `frames` messages: the native relay's batches."""
        ...

    def control(self, what: str) -> None:
        """Out-of-band request to every sink, e.g. "reopen" on SIGHUP."""
        ...

    @property
    def exit_code(self) -> int:
        """Non-zero if a sink says the run failed (a live check found a violation)."""
        ...

    def close(self, cut: bool = False) -> int:
        """Flush everything, close the sinks, and return `exit_code`. Every record handed
        over is written first, however long that takes; `cut` (a second stop request)
        gives up on what is not written yet, logs how much, and makes the code 4."""
        ...
