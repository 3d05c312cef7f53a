"""The replay driver: frames are renumbered into fresh connections, which are closed."""

from __future__ import annotations

from helpers.recorder import CMD_EV, RSP_EV, Recorder

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import replay_frames


def test_replay_renumbers_and_closes_connections():
    ann = Annotator()
    frames = [ann.annotate(c, 0.0, ev) for c, ev in ((1, CMD_EV), (1, RSP_EV), (2, CMD_EV))]
    rec = Recorder()
    done = replay_frames(frames, rec, conn_base=10)
    assert done.frames == 3 and done.conns == [11, 12]
    assert rec.calls[-2:] == [("close", 11), ("close", 12)]
