"""The worker pipeline end to end: a real fork, a real pipe, every record written."""

from __future__ import annotations

import asyncio
import json
import time

from helpers.recorder import CMD_EV, RSP_EV
from structlog.testing import capture_logs

from tpmsniff.model import Channel, ConnInfo, Direction, Event, Framing, Message
from tpmsniff.model.exits import EXIT_CAPTURE_LOST
from tpmsniff.pipeline import InProcessPipeline, WorkerPipeline
from tpmsniff.sinks.jsonl import JsonlSink


async def test_worker_process_writes_every_record(tmp_path):
    out = tmp_path / "w.jsonl"
    worker = WorkerPipeline(lambda: InProcessPipeline([JsonlSink(str(out))], deferred=False))
    worker.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 0.0))
    for _ in range(100):
        worker.events(1, 0.0, [CMD_EV, RSP_EV])
    ctrl = Event(Channel.CTRL, Direction.RESPONSE, Message(b"\xff" * 4, Framing.CTRL), 0xFFFFFFFF)
    worker.events(2, 0.0, [ctrl])
    worker.conn_close(1, 0.0)
    assert worker.frames_seen == 201
    assert worker.close() == 0 and worker.exit_code == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 201
    assert lines[0]["command"] == "GetRandom" and lines[-1]["ctrl_cmd"] == 0xFFFFFFFF


class Slow:
    """A sink that takes 20 ms per frame: the worker's drain at close takes seconds."""

    exit_code = 0

    def frame(self, f) -> None:
        time.sleep(0.02)

    def conn_open(self, info) -> None: ...
    def conn_close(self, conn, ts) -> None: ...
    def control(self, what) -> None: ...
    def close(self) -> None: ...


async def test_cut_stops_after_the_record_in_hand_and_counts_the_rest(tmp_path):
    """close(cut=True) while the worker is still writing: it stops after the record in
    hand, the code is 4, and one line gives exactly the messages not written."""
    out = tmp_path / "w.jsonl"
    worker = WorkerPipeline(
        lambda: InProcessPipeline([JsonlSink(str(out)), Slow()], deferred=False)
    )
    await worker.started()
    worker.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 0.0))
    for _ in range(100):
        worker.events(1, 0.0, [CMD_EV, RSP_EV])
    while worker.written < 5:  # records reach the worker within FLUSH_DELAY
        await asyncio.sleep(0.01)
    with capture_logs() as logs:
        assert worker.close(cut=True) == EXIT_CAPTURE_LOST
    written = worker.written
    assert 5 <= written < 200
    cut = [e for e in logs if e["event"].startswith("stop cut short")]
    assert [e["not_written"] for e in cut] == [200 - written]
    assert len(out.read_text().splitlines()) == written
    assert not [e for e in logs if e["event"] == "capture worker ended abnormally"]


def test_connection_records_alone_never_make_the_decoder():
    """A worker stopped before any message came never waits for the decoder's import."""
    made = []
    p = InProcessPipeline([], deferred=False, make_annotator=lambda: made.append(1))
    p.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 0.0))
    p.conn_close(1, 0.0)
    assert p.close() == 0 and made == []
