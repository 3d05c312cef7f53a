"""Live secret checking: flags each violation as it happens; exit status 1 at the end.

The alert goes to the same stream as the console, but this sink prints it itself: sinks
are independent consumers and never call each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog

from ..model import Frame
from .base import BaseSink, OptionError, SinkContext
from .text import BOLD, RED, RESET, wants_colour

if TYPE_CHECKING:  # imported when built: the checker needs the decoder (tpm2-pytss)
    from ..check.checker import Checker
    from ..check.findings import Finding

log = structlog.get_logger("tpmsniff.check")


def add_check_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of a check: the daemon's live one, and `tpmsniff check`'s."""
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
        "--sensitive",
        action="store_true",
        help="fail on every sensitive value an observer could read (sealed data, "
        "authValues, private keys; docs/verdicts.md), no secret needed",
    )
    p.add_argument(
        "--sensitive-nv",
        action="store_true",
        help="with --sensitive: NV_Write/NV_Read data are sensitive too",
    )
    p.add_argument(
        "--sensitive-random",
        action="store_true",
        help="with --sensitive: GetRandom output is sensitive too",
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


def checker_wanted(args: argparse.Namespace) -> bool:
    """Whether any check option was given (secrets, --sensitive, --require-encrypted)."""
    return bool(
        args.secret
        or args.secret_hex
        or args.secret_file
        or args.require_encrypted
        or args.sensitive
        or args.sensitive_nv
        or args.sensitive_random
    )


def build_checker(args: argparse.Namespace) -> Checker:
    """Raises ValueError with a one-line message on bad arguments."""
    from ..check.checker import Checker
    from ..check.requirements import Requirement
    from ..check.secrets import Secret
    from ..check.sensitive import SensitivePolicy

    values = [s.encode() for s in args.secret]
    for i, h in enumerate(args.secret_hex, 1):
        try:
            values.append(bytes.fromhex(h))
        except ValueError:  # never echo the value: it is a secret
            raise ValueError(f"--secret-hex #{i}: not hex") from None
    for fname in args.secret_file:
        try:
            values.append(Path(fname).read_bytes())
        except OSError as exc:
            raise ValueError(f"--secret-file {fname}: {exc.strerror}") from None
    if any(not v for v in values):
        raise ValueError("a secret is empty")
    secrets = [Secret(v, n) for n, v in enumerate(values, 1)]
    requires = [Requirement.parse(r) for r in args.require_encrypted]
    return Checker(
        secrets,
        requires,
        allow_weak=args.allow_weak,
        allow_empty=args.allow_empty,
        sensitive=SensitivePolicy(nv=args.sensitive_nv, random=args.sensitive_random)
        if args.sensitive or args.sensitive_nv or args.sensitive_random
        else None,
    )


class CheckSink(BaseSink):
    title = "live check"

    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        if live:  # offline checking is `tpmsniff check`
            add_check_options(group)

    @classmethod
    def check_options(cls, args: argparse.Namespace, live: bool) -> None:
        if live and checker_wanted(args):  # imports the decoder: only when asked
            try:
                build_checker(args)
            except ValueError as exc:
                raise OptionError(str(exc)) from None

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> CheckSink | None:
        if not ctx.live or not checker_wanted(args):
            return None
        # alerts go where the console prints; with --console none they are logged only
        return cls(build_checker(args), ctx.text if args.console != "none" else None)

    def __init__(
        self, checker: Checker, out: TextIO | None = None, *, log_findings: bool = True
    ) -> None:
        """out: where alerts are printed (the console's stream), or None. log_findings:
        also log each as an event (live); offline, `check` prints its own report."""
        self.checker = checker
        self.out = out
        self.colour = out is not None and wants_colour(out)
        self.log_findings = log_findings
        self.exit_code = 0

    def control(self, what: str) -> None:
        if what.startswith("input "):  # offline: findings name the file
            self.checker.file = what.removeprefix("input ")

    def frame(self, f: Frame) -> None:
        for finding in self.checker.feed(f):
            self._report(finding)

    def _report(self, finding: Finding) -> None:
        self.exit_code = 1
        if self.log_findings:
            log.error("check violation", kind=finding.kind, detail=finding.text())
        if self.out is None:
            return
        text = f"!!! {finding.text()}"
        try:
            self.out.write((f"{RED}{BOLD}{text}{RESET}" if self.colour else text) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must never stop the relay

    def close(self) -> None:
        for finding in self.checker.finish():
            self._report(finding)
        if not self.checker.findings:
            log.info("check passed", tpm_messages=self.checker.tpm_frames)
