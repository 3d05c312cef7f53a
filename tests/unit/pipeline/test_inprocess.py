"""Pipelines: in-process isolation of failing sinks and decoders, record order, the
replay driver, and the worker process end to end (a real fork, a real pipe)."""

from __future__ import annotations

import asyncio
import json

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import replay_frames
from tpmsniff.model import Channel, ConnInfo, Direction, Event, Frame, Framing, Message
from tpmsniff.pipeline import InProcessPipeline, WorkerPipeline
from tpmsniff.sinks.base import BaseSink
from tpmsniff.sinks.jsonl import JsonlSink

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")
RSP = bytes.fromhex("8001000000140000000000080102030405060708")
CMD_EV = Event(Channel.TPM, Direction.COMMAND, Message(GETRANDOM, Framing.RAW))
RSP_EV = Event(Channel.TPM, Direction.RESPONSE, Message(RSP, Framing.RAW))


class Recorder(BaseSink):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def conn_open(self, info: ConnInfo) -> None:
        self.calls.append(("open", info.conn))

    def frame(self, f: Frame) -> None:
        self.calls.append(("frame", f.name))

    def conn_close(self, conn: int, ts: float) -> None:
        self.calls.append(("close", conn))

    def control(self, what: str) -> None:
        self.calls.append(("control", what))


class Broken(BaseSink):
    def frame(self, f: Frame) -> None:
        raise RuntimeError("disk on fire")


def test_in_process_order_and_isolation():
    rec = Recorder()
    p = InProcessPipeline([Broken(), rec], deferred=False)
    p.conn_open(ConnInfo(1, Channel.TPM, "peer", "up", 0.0))
    p.events(1, 0.0, [CMD_EV, RSP_EV])
    p.control("reopen")
    p.conn_close(1, 0.0)
    assert p.close() == 4  # the other sinks went on; the broken one's output is lost (issue 10)
    assert rec.calls == [
        ("open", 1),
        ("frame", "GetRandom"),
        ("frame", "GetRandom"),
        ("control", "reopen"),
        ("close", 1),
    ]
    assert p.frames_seen == 2


async def test_deferred_work_runs_after_the_caller_returns():
    rec = Recorder()
    p = InProcessPipeline([rec])
    p.events(1, 0.0, [CMD_EV])
    assert rec.calls == []  # nothing between the relay's read and its write
    await asyncio.sleep(0)
    assert rec.calls == [("frame", "GetRandom")]


def test_exit_code_is_the_worst_sink_verdict():
    class Failed(BaseSink):
        exit_code = 1

    assert InProcessPipeline([Recorder(), Failed()], deferred=False).close() == 1


def test_replay_renumbers_and_closes_connections():
    ann = Annotator()
    frames = [ann.annotate(c, 0.0, ev) for c, ev in ((1, CMD_EV), (1, RSP_EV), (2, CMD_EV))]
    rec = Recorder()
    done = replay_frames(frames, rec, conn_base=10)
    assert done.frames == 3 and done.conns == [11, 12]
    assert rec.calls[-2:] == [("close", 11), ("close", 12)]


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
