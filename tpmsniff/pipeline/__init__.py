"""Pipelines: annotate relayed messages and feed the sinks, in-process or in a worker.

Both implement `FramePipeline` (interface.py); records.py holds what crosses the pipe.
"""

from typing import TYPE_CHECKING, Any

from .interface import FramePipeline

if TYPE_CHECKING:
    from .inprocess import InProcessPipeline
    from .worker import WorkerPipeline

__all__ = ["FramePipeline", "InProcessPipeline", "WorkerPipeline"]


def __getattr__(name: str) -> Any:
    """Import lazily: the relay process needs the worker, not the decoder."""
    if name == "InProcessPipeline":
        from .inprocess import InProcessPipeline

        return InProcessPipeline
    if name == "WorkerPipeline":
        from .worker import WorkerPipeline

        return WorkerPipeline
    raise AttributeError(name)
