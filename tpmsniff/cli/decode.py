"""`tpmsniff decode`: decode existing captures and swtpm logs, fully (sessions, verdicts).

Exit codes: 0 decoded (possibly with warnings for partly broken inputs, naming the file
and offset), 2 usage error or an input that cannot be read at all (one line per such
input, after every readable input was decoded).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..inputs import FORMATS, InputError, replay
from ..model.exits import EXIT_OK, EXIT_USAGE
from ..pipeline import InProcessPipeline
from ..safefile import describe
from .args import (
    Parser,
    add_auth_arg,
    add_sink_options,
    build_sinks,
    parse_auths,
    sink_context,
    sink_formats,
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tpmsniff decode",
        description="Decode TPM traffic from captures (pcapng, pcap: tpmsniff, swtpm --pcap, "
        "tcti-pcap, tshark/tcpdump on lo, swtpm-log-to-pcap) and swtpm --log files.",
        epilog="exit codes: 0 decoded (a partly damaged input is decoded as far as it "
        "can be, with a warning naming the file and offset), 2 usage error or an "
        "unreadable input (every readable input is still decoded). Schema of "
        "--output jsonl: docs/jsonl.md",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument(
        "--input-format",
        choices=FORMATS,
        default="auto",
        help="read every input as this format (default: detected by content; bus "
        "capture formats: docs/hardware.md)",
    )
    p.add_argument(
        "--output",
        choices=sink_formats(),  # the sinks that can print to stdout
        default="summary",
        help="what to print on stdout: summary (one line per message), tree (every field "
        "with its offset), console/hexdump (headers and hexdump), jsonl (default: summary)",
    )
    add_sink_options(p, live=False)
    add_auth_arg(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        auth = parse_auths(args)
    except ValueError as exc:
        print(f"tpmsniff decode: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:  # `--pcap -`: stdout is the pcapng, the text goes to stderr
        sinks = build_sinks(args, sink_context(args, False, sys.stdout, sys.stderr))
    except OSError as exc:
        print(f"tpmsniff decode: error: {describe(str(exc.filename), exc)}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = InProcessPipeline(sinks, deferred=False)
    errors: list[InputError] = []
    try:
        replay(args.inputs, pipeline, auth, args.input_format, errors=errors)
    except BrokenPipeError:  # `| head`: the rest goes nowhere, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        pipeline.close()
    for err in errors:  # every readable input was decoded; the others are named here
        print(f"tpmsniff decode: error: {err}", file=sys.stderr)
    return EXIT_USAGE if errors else EXIT_OK
