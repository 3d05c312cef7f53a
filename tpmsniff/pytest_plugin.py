"""pytest plugin (entry point `pytest11`): put tpmsniff in front of a TPM in your tests.

    def test_seal_is_encrypted(tpmsniff_proxy):
        tpm = tpmsniff_proxy("/run/swtpm.sock")          # swtpm --server socket
        run_my_code(tcti=tpm.tcti)                       # e.g. "swtpm:path=/tmp/.../tpm.sock"
        tpm.assert_no_plaintext(b"my-disk-key")
        tpm.assert_encrypted("Unseal")                   # direction implied: response

The relay runs in-process (its own event loop in a thread) and collects every annotated
frame; `tpm.pcap` is an annotated capture of the test.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from .check import Checker, Requirement, Secret
from .model import Direction, Frame


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
        from .cli import build_parser, make_pipeline, serve

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
        self.frames: list[Frame] = []
        self._pipeline = make_pipeline(args)
        self._pipeline.listeners.append(self.frames.append)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(args, self._pipeline, stop=self._stop, ready=lambda _r: self._ready.set())

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
        self._pipeline.close()

    # -- assertions -------------------------------------------------------------
    def assert_no_plaintext(self, secret: bytes | str) -> None:
        """Fail if the secret crossed the bus in clear, or was recoverable (WEAK session)."""
        self.sync()
        value = secret.encode() if isinstance(secret, str) else secret
        checker = Checker([Secret("secret", value)])
        for f in self.frames:
            checker.feed(f)
        checker.finish()
        if checker.findings:
            raise AssertionError("\n".join(f.text() for f in checker.findings))

    def assert_encrypted(
        self, name: str, direction: str | None = None, *, allow_weak: bool = False
    ) -> None:
        """Fail unless every `name` message in `direction` was ENCRYPTED (and one was seen)."""
        self.sync()
        req = Requirement.parse(f"{name}:{direction}" if direction else name)
        checker = Checker(requires=[req], allow_weak=allow_weak)
        for f in self.frames:
            checker.feed(f)
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


@pytest.fixture
def tpmsniff_proxy(tmp_path_factory):
    """Factory fixture: `tpmsniff_proxy(upstream, pcap=True, auth=None)` -> SniffedTPM."""
    started: list[SniffedTPM] = []

    def start(upstream: str, **kw) -> SniffedTPM:
        tpm = SniffedTPM(upstream, tmp_path_factory.mktemp("tpmsniff"), **kw)
        started.append(tpm)
        return tpm

    yield start
    for tpm in started:
        tpm.stop()
