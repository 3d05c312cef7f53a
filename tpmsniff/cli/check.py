"""`tpmsniff check`: assert on captures that no secret crossed the bus readable.

Exit codes: 0 pass, 1 violation, 2 usage error, unreadable or partly readable input, or a
report that cannot be written (one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from ..check.reports import write_json, write_junit
from ..inputs import FORMATS, InputError, PartialInput, replay
from ..inputs.pcapng import own_comment_spans
from ..model.exits import EXIT_OK, EXIT_USAGE, EXIT_VIOLATION
from ..safefile import UnsafeFile
from ..sinks.check import CheckSink, add_check_options, build_checker, checker_wanted
from .args import Parser, add_auth_arg, parse_auths


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tpmsniff check",
        description="Check captures: no secret in clear, required encryption present.",
        epilog="exit codes: 0 pass, 1 violation, 2 usage error, unreadable or partly "
        "readable input, or unwritable report",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="captures or swtpm logs, as `tpmsniff decode` reads them",
    )
    p.add_argument(
        "--input-format",
        choices=FORMATS,
        default="auto",
        help="read every input as this format (default: detected by content)",
    )
    add_check_options(p)
    add_auth_arg(p)
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="check what could be read of an input that breaks part-way, instead of exiting 2",
    )
    p.add_argument("--json", metavar="FILE", help="write a JSON report")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if not checker_wanted(args):
        print(
            "tpmsniff check: error: give --secret/--secret-hex/--secret-file, "
            "--sensitive or --require-encrypted",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        checker = build_checker(args)
        auth = parse_auths(args)
    except ValueError as exc:
        print(f"tpmsniff check: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    partial: list[PartialInput] = []
    errors: list[InputError] = []  # every readable input is still checked
    sink = CheckSink(checker, log_findings=False)
    frames = replay(args.inputs, sink, auth, args.input_format, partial=partial, errors=errors)
    if checker.secrets:
        for path in args.inputs:  # fail closed: the file's bytes, whatever parsed
            try:
                checker.scan_raw(path, _read(path), own_comment_spans(path))
            except InputError as exc:
                if not any(str(e) == str(exc) for e in errors):
                    errors.append(exc)
    checker.file = None
    checker.finish()
    for f in checker.findings:
        print(f.text())
    for p in partial:
        print(f"PARTIAL: {p.text()}")
    incomplete = (bool(partial) and not args.allow_partial) or bool(errors)
    verdict = "FAIL" if checker.failed else "INCOMPLETE" if incomplete else "PASS"
    print(
        f"{verdict}: {len(checker.findings)} finding(s) in {frames} message(s) "
        f"from {len(args.inputs)} input(s)"
    )
    try:
        if args.json:
            write_json(
                args.json,
                checker,
                frames,
                args.inputs,
                [p.text() for p in partial] + [str(e) for e in errors],
                incomplete=incomplete,
            )
        if args.junit:
            write_junit(args.junit, checker, args.inputs)
    except OSError as exc:
        print(f"tpmsniff check: error: report {exc.filename or ''}{_why(exc)}", file=sys.stderr)
        return EXIT_USAGE
    for err in errors:  # an input that could not be read never passes
        print(f"tpmsniff check: error: {err}", file=sys.stderr)
    if errors:
        return EXIT_USAGE
    if incomplete:
        print(
            f"tpmsniff check: error: {partial[0].text()} (--allow-partial checks what was read)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_VIOLATION if checker.failed else EXIT_OK


def _read(path: str, size: int = 16 << 20) -> Iterator[bytes]:
    """The file's bytes in bounded chunks."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(size):
                yield chunk
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None


def _why(exc: OSError) -> str:
    if isinstance(exc, UnsafeFile):
        return str(exc.strerror)
    return f": {exc.strerror}"
