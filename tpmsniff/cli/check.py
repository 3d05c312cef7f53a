"""`tpmsniff check`: assert on captures that no secret crossed the bus in clear.

Exit codes: 0 pass, 1 violation, 2 usage error or unreadable input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..check.reports import write_json, write_junit
from ..inputs import InputError, replay
from ..sinks.check import CheckSink
from .args import add_secret_args, build_checker

EXIT_PASS, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"tpmsniff check: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tpmsniff check",
        description="Check captures: no secret in clear, required encryption present.",
        epilog="exit codes: 0 pass, 1 violation, 2 usage error or unreadable input",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="captures or swtpm logs, as `tpmsniff decode` reads them",
    )
    add_secret_args(p)
    p.add_argument("--json", metavar="FILE", help="write a JSON report")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if not (args.secret or args.secret_hex or args.secret_file or args.require_encrypted):
        print(
            "tpmsniff check: error: give --secret/--secret-hex/--secret-file or "
            "--require-encrypted",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        checker, auth = build_checker(args)
    except ValueError as exc:
        print(f"tpmsniff check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        frames = replay(args.inputs, CheckSink(checker, log_findings=False), auth)
    except InputError as exc:
        print(f"tpmsniff check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    checker.file = None
    checker.finish()
    for f in checker.findings:
        print(f.text())
    verdict = "FAIL" if checker.failed else "PASS"
    print(
        f"{verdict}: {len(checker.findings)} finding(s) in {frames} message(s) "
        f"from {len(args.inputs)} input(s)"
    )
    if args.json:
        write_json(args.json, checker, frames, args.inputs)
    if args.junit:
        write_junit(args.junit, checker, args.inputs)
    return EXIT_VIOLATION if checker.failed else EXIT_PASS
