"""The daemon's start and stop, with a stand-in pipeline: READY=1 only once the outputs
are open and never after a stop request; a stop with nothing outstanding (the relays'
`busy`) does not wait, even with an idle client connected."""

from __future__ import annotations

import asyncio
import socket
import time

from tpmsniff.cli import service
from tpmsniff.cli.daemon import build_parser
from tpmsniff.pipeline import InProcessPipeline


class NeverStarted(InProcessPipeline):
    """A worker that has not opened its outputs yet (still starting)."""

    async def started(self) -> None:
        await asyncio.Event().wait()


def _daemon(tmp_path, pipeline: InProcessPipeline) -> tuple[service.Daemon, socket.socket]:
    up = socket.socket(socket.AF_UNIX)
    up.bind(str(tmp_path / "up.sock"))
    up.listen()
    argv = ["--listen", str(tmp_path / "l.sock"), "--upstream", str(tmp_path / "up.sock")]
    argv += ["--listen-ctrl", "none", "--relay", "python", "--in-process", "--console", "none"]
    args = build_parser().parse_args(argv)
    d = service.Daemon(args)
    d.pipeline = pipeline
    return d, up


async def test_no_ready_after_a_stop_request_before_the_outputs_opened(tmp_path, monkeypatch):
    said: list[str] = []
    monkeypatch.setattr(service, "notify", said.append)
    d, up = _daemon(tmp_path, NeverStarted(deferred=False))
    stop = asyncio.Event()
    ready: list[object] = []
    task = asyncio.ensure_future(d.serve(stop, ready=ready.append))
    while not (tmp_path / "l.sock").exists():
        await asyncio.sleep(0.001)
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    up.close()
    assert "READY=1" not in said and ready == []
    assert "STOPPING=1" in said


async def test_stop_with_nothing_outstanding_does_not_wait(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "notify", lambda state: None)
    d, up = _daemon(tmp_path, InProcessPipeline(deferred=False))
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.ensure_future(d.serve(stop, ready=lambda relays: started.set()))
    await asyncio.wait_for(started.wait(), 5)
    idle = socket.socket(socket.AF_UNIX)  # an idle client stays connected, as QEMU does
    idle.setblocking(False)
    await asyncio.get_running_loop().sock_connect(idle, str(tmp_path / "l.sock"))
    for r in d.relays:  # what the relays say: nothing outstanding
        monkeypatch.setattr(type(r), "busy", property(lambda self: False))
    t0 = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert time.monotonic() - t0 < service.DRAIN_LIMIT / 4
    idle.close()
    up.close()
