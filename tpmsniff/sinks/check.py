"""Live secret checking: flags each violation as it happens; exit status 1 at the end.

The alert goes to the same stream as the console, but this sink prints it itself: sinks
are independent consumers and never call each other.
"""

from __future__ import annotations

from typing import TextIO

import structlog

from ..check.checker import Checker
from ..check.findings import Finding
from ..model import Frame
from .base import BaseSink
from .text import BOLD, RED, RESET, wants_colour

log = structlog.get_logger("tpmsniff.check")


class CheckSink(BaseSink):
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
