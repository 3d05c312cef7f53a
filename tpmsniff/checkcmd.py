"""`tpmsniff check`: assert on captures that no secret crossed the bus in clear.

Exit codes: 0 pass, 1 violation, 2 usage error or unreadable input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .annotate import Annotator
from .check import Checker, Finding, Requirement, Secret
from .inputs import InputError, frames_from_input
from .sessions import parse_auth

EXIT_PASS, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"tpmsniff check: error: {message}\n")


def add_auth_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="HANDLE=VALUE",
        help="authValue for weak-session decryption (text, or hex:…)",
    )


def add_secret_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="TEXT",
        help="a secret that must not cross the bus in clear (repeatable)",
    )
    p.add_argument("--secret-hex", action="append", default=[], metavar="HEX")
    p.add_argument("--secret-file", action="append", default=[], metavar="FILE")
    p.add_argument(
        "--require-encrypted",
        action="append",
        default=[],
        metavar="NAME[:command|:response]",
        help="fail unless every such message is ENCRYPTED (TPM2_CC name, "
        "case-insensitive; default direction: the one the name implies)",
    )
    p.add_argument(
        "--allow-weak",
        action="store_true",
        help="count WEAK (unsalted, unbound) encryption as encrypted",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="do not fail when no TPM message, or no required command, was seen",
    )
    add_auth_arg(p)


def build_checker(args: argparse.Namespace) -> tuple[Checker, dict[int, bytes]]:
    """Raises ValueError with a one-line message on bad arguments."""
    secrets = [Secret(s, s.encode()) for s in args.secret]
    for h in args.secret_hex:
        try:
            secrets.append(Secret(f"hex:{h}", bytes.fromhex(h)))
        except ValueError:
            raise ValueError(f"--secret-hex {h!r}: not hex") from None
    for fname in args.secret_file:
        try:
            secrets.append(Secret(fname, Path(fname).read_bytes()))
        except OSError as exc:
            raise ValueError(f"--secret-file {fname}: {exc.strerror}") from None
    if any(not s.value for s in secrets):
        raise ValueError("a secret is empty")
    requires = [Requirement.parse(r) for r in args.require_encrypted]
    auth = dict(parse_auth(a) for a in args.auth)
    checker = Checker(
        secrets,
        requires,
        allow_weak=args.allow_weak,
        allow_empty=args.allow_empty,
    )
    return checker, auth


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
    frames = 0
    try:
        for path in args.inputs:
            checker.file = path
            for f in frames_from_input(path, Annotator(auth)):
                frames += 1
                checker.feed(f)
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


def _finding_dict(f: Finding) -> dict:
    return {k: getattr(f, k) for k in f.__slots__ if getattr(f, k) is not None}


def write_json(path: str, checker: Checker, frames: int, inputs: list[str]) -> None:
    Path(path).write_text(
        json.dumps(
            {
                "result": "fail" if checker.failed else "pass",
                "inputs": inputs,
                "messages": frames,
                "tpm_messages": checker.tpm_frames,
                "secrets": [s.label for s in checker.secrets],
                "require_encrypted": [str(r) for r in checker.requires],
                "findings": [_finding_dict(f) for f in checker.findings],
            },
            indent=2,
        )
        + "\n"
    )


def write_junit(path: str, checker: Checker, inputs: list[str]) -> None:
    cases: list[tuple[str, list[Finding]]] = [
        ("capture is not empty", [f for f in checker.findings if f.kind == "empty"]),
    ]
    for s in checker.secrets:
        cases.append(
            (
                f"secret {s.label!r} never in clear",
                [f for f in checker.findings if f.kind == "secret" and repr(s.label) in f.message],
            )
        )
    for r in checker.requires:
        cases.append(
            (
                f"{r} encrypted",
                [
                    f
                    for f in checker.findings
                    if f.kind != "secret" and f.kind != "empty" and str(r) in f.message
                ],
            )
        )
    suite = ET.Element(
        "testsuite",
        name="tpmsniff check",
        tests=str(len(cases)),
        failures=str(sum(1 for _, fs in cases if fs)),
    )
    for name, fs in cases:
        case = ET.SubElement(suite, "testcase", classname="tpmsniff", name=name)
        if fs:
            fail = ET.SubElement(case, "failure", message=fs[0].text())
            fail.text = "\n".join(f.text() for f in fs)
    root = ET.Element("testsuites", name=" ".join(inputs))
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
