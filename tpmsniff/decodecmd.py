"""`tpmsniff decode`: decode existing captures and swtpm logs, fully (sessions, verdicts).

Exit codes: 0 decoded (possibly with warnings for partly broken inputs), 2 usage error or
an input that cannot be read at all (one line naming the file).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace

from .annotate import Annotator
from .checkcmd import add_auth_arg
from .inputs import FORMATS, InputError, frames_from_input
from .sessions import parse_auth
from .sinks.base import Sink
from .sinks.console import ConsoleSink
from .sinks.jsonl import JsonlSink
from .sinks.pcapng import PcapngSink

EXIT_OK, EXIT_USAGE = 0, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"tpmsniff decode: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tpmsniff decode",
        description="Decode TPM traffic from captures (pcapng, pcap: tpmsniff, swtpm --pcap, "
        "tcti-pcap, tshark/tcpdump on lo, swtpm-log-to-pcap) and swtpm --log files.",
        epilog="exit codes: 0 decoded, 2 usage error or unreadable input. Schema of "
        "--output jsonl: docs/jsonl.md",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--input-format", choices=FORMATS, default="auto")
    p.add_argument(
        "--output",
        choices=("console", "summary", "jsonl"),
        default="summary",
        help="what to print on stdout (default: summary)",
    )
    p.add_argument("--pcap", metavar="OUT", help="also write an annotated tpmsniff pcapng")
    add_auth_arg(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        auth = dict(parse_auth(a) for a in args.auth)
    except ValueError as exc:
        print(f"tpmsniff decode: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out: Sink
    if args.output == "jsonl":
        out = JsonlSink(out=sys.stdout, flush=False)
    else:
        out = ConsoleSink("hexdump" if args.output == "console" else "summary")
    pcap = None
    if args.pcap:
        try:
            pcap = PcapngSink(args.pcap)
        except OSError as exc:
            print(f"tpmsniff decode: error: {args.pcap}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    ids = itertools.count(1)
    code = EXIT_OK
    try:
        for path in args.inputs:
            if isinstance(out, JsonlSink):
                out.file = path
            streams: dict[int, int] = {}  # this file's stream -> capture-wide connection id
            try:
                for f in frames_from_input(path, Annotator(auth), args.input_format):
                    out.frame(f)
                    if pcap is not None:
                        conn = streams.setdefault(f.conn, next(ids))
                        pcap.frame(replace(f, conn=conn))
            except InputError as exc:
                print(f"tpmsniff decode: error: {exc}", file=sys.stderr)
                code = EXIT_USAGE
                break
            if pcap is not None:
                for conn in streams.values():
                    pcap.conn_close(conn, 0.0)
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
        return code
    finally:
        out.close()
        if pcap is not None:
            pcap.close()
    return code
