"""Live secret checking: flags each violation as it happens; exit status 1 at the end."""

from __future__ import annotations

import structlog

from ..check import Checker
from ..model import Frame
from .base import BaseSink
from .console import ConsoleSink

log = structlog.get_logger("tpmsniff.check")


class CheckSink(BaseSink):
    def __init__(self, checker: Checker, console: ConsoleSink | None = None) -> None:
        self.checker = checker
        self.console = console
        self.exit_code = 0

    def frame(self, f: Frame) -> None:
        for finding in self.checker.feed(f):
            self._report(finding)

    def _report(self, finding) -> None:
        self.exit_code = 1
        log.error("check violation", kind=finding.kind, detail=finding.text())
        if self.console is not None:
            self.console.alert(finding.text())

    def close(self) -> None:
        for finding in self.checker.finish():
            self._report(finding)
        if not self.checker.findings:
            log.info("check passed", tpm_messages=self.checker.tpm_frames)
