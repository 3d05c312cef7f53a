"""What every front end (the daemon, `decode`, `check`) parses the same way: the parser
class (one-line errors, exit 2), --auth, and the sinks' options from the registry."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn, TextIO

from ..model import FrameConsumer
from ..model.exits import EXIT_USAGE
from ..sinks.base import SinkContext
from ..sinks.registry import SINKS


class Parser(argparse.ArgumentParser):
    """Usage errors are one line, `PROG: error: ...`, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_auth_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="HANDLE=VALUE",
        help="authValue for weak-session decryption (text, or hex:…)",
    )


def parse_auths(args: argparse.Namespace) -> dict[int, bytes]:
    """--auth as {handle: authValue}; raises ValueError with a one-line message."""
    if not args.auth:
        return {}
    from ..codec.sessions import parse_auth  # the decoder: only when asked

    return dict(parse_auth(a) for a in args.auth)


def add_sink_options(p: argparse.ArgumentParser, live: bool) -> None:
    """Each sink class's options, in a group of its own."""
    for cls in SINKS:
        cls.add_options(p.add_argument_group(cls.title), live)


def sink_formats() -> list[str]:
    """What `decode --output` can print: every sink's formats, in registry order."""
    return [f for cls in SINKS for f in cls.formats]


def check_sink_options(args: argparse.Namespace, live: bool) -> None:
    """Raises OptionError (one line) for the first sink whose options cannot work."""
    for cls in SINKS:
        cls.check_options(args, live)


def sink_context(
    args: argparse.Namespace, live: bool, stdout: TextIO, stderr: TextIO
) -> SinkContext:
    """Text goes to stdout, unless a sink writes stdout itself (`--pcap -`)."""
    takes = any(cls.takes_stdout(args) for cls in SINKS)
    return SinkContext(live, stderr if takes else stdout)


def sinks_wait_on_open(args: argparse.Namespace) -> bool:
    return any(cls.waits_on_open(args) for cls in SINKS)


def build_sinks(args: argparse.Namespace, ctx: SinkContext) -> Sequence[FrameConsumer]:
    """The sinks the options ask for, in registry order. Raises OSError."""
    return [s for cls in SINKS if (s := cls.from_options(args, ctx)) is not None]
