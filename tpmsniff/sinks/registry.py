"""Every sink class the front ends offer, in the order they run (and --help lists them).

Adding a sink: its module (a `BaseSink` subclass with its options) and one line here.
"""

from __future__ import annotations

from .base import BaseSink
from .check import CheckSink
from .console import ConsoleSink
from .jsonl import JsonlSink
from .pcapng import PcapngSink
from .tee import TeeSink

SINKS: tuple[type[BaseSink], ...] = (ConsoleSink, PcapngSink, TeeSink, JsonlSink, CheckSink)
