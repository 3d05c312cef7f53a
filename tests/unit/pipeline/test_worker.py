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


async def test_the_worker_writes_each_batch_while_it_runs(tmp_path):
    """A live reader of the capture sees every message of a batch before the stop: the
    worker flushes its outputs after each read from the pipe, not only at close."""
    import asyncio
    import time

    from tpmsniff.inputs.pcapng import read_pcapng
    from tpmsniff.sinks.pcapng import PcapngSink

    out = tmp_path / "w.pcapng"
    worker = WorkerPipeline(lambda: InProcessPipeline([PcapngSink(str(out))], deferred=False))
    await worker.started()
    worker.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 0.0))
    for _ in range(50):
        worker.events(1, 0.0, [CMD_EV, RSP_EV])
    deadline = time.monotonic() + 20
    seen = 0
    while time.monotonic() < deadline:
        seen = len(list(read_pcapng(str(out))))
        if seen == 3 + 100:
            break
        await asyncio.sleep(0.01)  # poll the file: what a live reader does
    assert seen == 3 + 100
    assert worker.close() == 0
    assert len(list(read_pcapng(str(out)))) == 3 + 100 + 3


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
    for _ in range(3):
        worker.events(1, 0.0, [CMD_EV, RSP_EV])
    # written counts what reached the files: a batch counts once flushed
    while worker.written < 6:  # records reach the worker within FLUSH_DELAY
        await asyncio.sleep(0.01)
    for _ in range(97):
        worker.events(1, 0.0, [CMD_EV, RSP_EV])
    with capture_logs() as logs:
        assert worker.close(cut=True) == EXIT_CAPTURE_LOST
    written = worker.written
    assert 6 <= written < 200
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
