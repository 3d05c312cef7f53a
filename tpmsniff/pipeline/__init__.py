"""Pipelines: annotate relayed messages and feed the sinks, in-process or in a worker.

Both implement `FramePipeline` (interface.py); records.py holds what crosses the pipe.
"""

from .inprocess import InProcessPipeline
from .interface import FramePipeline
from .worker import WorkerPipeline

__all__ = ["FramePipeline", "InProcessPipeline", "WorkerPipeline"]
