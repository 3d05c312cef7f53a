"""`SniffedTPM`: an in-process tpmsniff relay in front of a TPM, for tests.

The relay runs in its own event loop in a thread and collects every annotated frame;
assertions replay them through the same check as `tpmsniff check`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from ..check.checker import Checker
from ..check.requirements import Requirement
from ..check.secrets import Secret
from ..check.sensitive import SensitivePolicy
from ..cli.daemon import build_parser
from ..cli.service import Daemon
from ..inputs import replay_frames
from ..model import Direction, Frame
from ..sinks.base import BaseSink
from ..sinks.check import CheckSink


class _Collector(BaseSink):
    """Keeps every frame (the relay runs in-process, so this is the test's own list)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def frame(self, f: Frame) -> None:
        self.frames.append(f)


class SniffedTPM:
    """A running in-process tpmsniff relay and what it has seen."""

    def __init__(
        self,
        upstream: str,
        workdir: Path,
        *,
        pcap: bool = True,
        auth: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> None:

        workdir.mkdir(parents=True, exist_ok=True)
        self.listen = str(workdir / "tpm.sock")
        self.tcti = f"swtpm:path={self.listen}"
        self.pcap = workdir / "capture.pcapng" if pcap else None
        argv = [
            "--listen",
            self.listen,
            "--upstream",
            upstream,
            "--console",
            "none",
            "--in-process",
            "--log-level",
            "warning",
        ]
        if self.pcap is not None:
            argv += ["--pcap", str(self.pcap)]
        for a in auth or []:
            argv += ["--auth", a]
        args = build_parser().parse_args(argv + (extra or []))
        self._collected = _Collector()
        self.frames = self._collected.frames
        self._daemon = Daemon(args, extra=[self._collected])
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self._daemon.serve(stop=self._stop, ready=lambda _r: self._ready.set())

        def thread() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:  # reported to the test thread
                self._error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=thread, name="tpmsniff", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"tpmsniff did not start: {self._error}")

    def sync(self) -> None:
        """Wait until every frame relayed so far has been annotated."""
        if self._loop is not None and self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop)
            fut.result(10)
            fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop)
            fut.result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self._daemon.close()

    # -- assertions -------------------------------------------------------------
    def assert_no_plaintext(self, *secrets: bytes | str) -> None:
        """Fail if a secret crossed the bus in clear, or was recoverable (WEAK session).
        The failure names each secret `secret #N (sha256:…)`, never by its value."""
        values = [s.encode() if isinstance(s, str) else s for s in secrets]
        self._check(Checker([Secret(v, n) for n, v in enumerate(values, 1)]))

    def assert_no_sensitive(self, *, nv: bool = False, random: bool = False) -> None:
        """Fail on every sensitive value an observer could read (PLAINTEXT or WEAK): sealed
        data, authValues, private keys (docs/verdicts.md); `nv`/`random`: NV data and
        GetRandom output too."""
        self._check(Checker(sensitive=SensitivePolicy(nv=nv, random=random)))

    def assert_encrypted(
        self, name: str, direction: str | None = None, *, allow_weak: bool = False
    ) -> None:
        """Fail unless every `name` message in `direction` was ENCRYPTED (and one was seen)."""
        req = Requirement.parse(f"{name}:{direction}" if direction else name)
        self._check(Checker(requires=[req], allow_weak=allow_weak))

    def _check(self, checker: Checker) -> None:
        """Replay what was seen through the same check sink as `tpmsniff check`."""
        self.sync()
        replay_frames(list(self.frames), CheckSink(checker, log_findings=False))
        checker.finish()
        if checker.findings:
            raise AssertionError("\n".join(f.text() for f in checker.findings))

    def messages(self, name: str, direction: str | None = None) -> list[Frame]:
        self.sync()
        return [
            f
            for f in self.frames
            if f.tpm is not None
            and f.name == name
            and (direction is None or f.direction is Direction(direction))
        ]
