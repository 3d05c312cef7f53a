"""The in-process pipeline: isolation of failing sinks and decoders, record order,
deferred work, the exit code."""

from __future__ import annotations

import asyncio

from helpers.recorder import CMD_EV, RSP_EV, Recorder

from tpmsniff.model import Channel, ConnInfo, Frame
from tpmsniff.pipeline import InProcessPipeline
from tpmsniff.sinks.base import BaseSink


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
