"""No-op defaults for `FrameConsumer`, so a sink implements only the calls it needs, and
the options protocol every sink class follows (sinks/registry.py lists the classes).

A sink class owns its command-line options: it declares them (`add_options`), says
whether they can work (`check_options`, before the daemon forks its worker) and builds
itself from them (`from_options`). The front ends (the daemon, `decode`) only iterate the
registry. Declaring options must stay cheap: a sink module imports its heavy libraries
(dpkt, tpm2-pytss, cryptography) only when it is built, never for its options.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import ClassVar, TextIO

from ..model import ConnInfo, Frame, FrameConsumer
from ..safefile import describe, open_private


class OptionError(ValueError):
    """A sink's options cannot work: one line (the daemon exits 3, `decode` 2)."""


def check_writable(path: str) -> None:
    """The checks the sink makes when it opens `path`, without truncating anything yet."""
    try:
        os.close(open_private(path, append=True))
    except OSError as exc:
        raise OptionError(f"capture {describe(path, exc)}") from None


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a front end decides for every sink it builds."""

    live: bool  # the daemon (True) or `tpmsniff decode` (False)
    text: TextIO  # where text goes: stdout, or stderr when a sink writes stdout itself


class BaseSink:
    exit_code = 0  # non-zero: this sink says the run failed (e.g. a live check)

    title: ClassVar[str | None] = None  # its option group in --help
    formats: ClassVar[tuple[str, ...]] = ()  # the `decode --output` values it prints

    # -- options (classmethods: they run before any sink exists) ---------------------
    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        """Declare this sink's options, for the daemon (`live`) or `decode`."""

    @classmethod
    def check_options(cls, args: argparse.Namespace, live: bool) -> None:
        """Raise OptionError when the options cannot work (without opening for good)."""

    @classmethod
    def takes_stdout(cls, args: argparse.Namespace) -> bool:
        """Whether this sink writes standard output itself (text then goes to stderr)."""
        return False

    @classmethod
    def waits_on_open(cls, args: argparse.Namespace) -> bool:
        """Whether building it may wait on someone else (a named pipe's reader)."""
        return False

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> FrameConsumer | None:
        """The sink the options ask for, or None. Raises OSError for an output that
        cannot be opened."""
        return None

    # -- FrameConsumer -----------------------------------------------------------------
    def conn_open(self, info: ConnInfo) -> None:
        pass

    def frame(self, f: Frame) -> None:
        pass

    def conn_close(self, conn: int, ts: float) -> None:
        pass

    def control(self, what: str) -> None:
        pass

    def flush(self) -> None:
        """Write out what is buffered: the pipeline calls this after each batch."""

    def close(self) -> None:
        pass
