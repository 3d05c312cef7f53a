"""The end-of-stream policy (docs/protocols.md, "End of stream"), differentially: the
same scripted chunking, pipelining, half-closes, closes, resets and stalls are played
against swtpm directly, through the Python relay and through the native relay, and the
bytes at both ends are compared: what the client received and how its connection ended,
and the commands swtpm executed. Where swtpm itself can take the script (whole requests,
one at a time), all three must agree byte for byte; where only a relay can (split or
pipelined requests, which swtpm would misread), the two relays must agree and match the
policy. Every scenario ends with a new client, which must be served at once.
"""

from __future__ import annotations

import pytest
from conftest import start_sniff, start_swtpm, wait_for
from helpers.scripted import (
    GETCAP,
    PCRREAD,
    Outcome,
    executed,
    play,
    response_length,
    served_within,
)

pytestmark = pytest.mark.integration

TARGETS = ("direct", "python", "native")
NEXT_CLIENT_S = 1.0  # generous under load: the bug it guards against was 3-4 s


class Target:
    def __init__(self, tmp, kind: str, name: str) -> None:
        self.sw = start_swtpm(tmp, kind, name=f"swtpm-{name}")
        self.sniff = None
        self.addr = self.sw.data
        if name != "direct":
            self.sniff = start_sniff(
                tmp,
                self.sw.data,
                name=f"sniff-{name}",
                pcap=False,
                extra=["--console", "none", "--listen-ctrl", "none", "--relay", name],
            )
            self.addr = self.sniff.listen

    def run(self, script: list[tuple]) -> Outcome:
        before = len(executed(self.sw.log))
        out = play(self.addr, script)
        served_within(self.addr, NEXT_CLIENT_S)
        cmds = executed(self.sw.log)[before:]
        assert cmds[-1] == GETCAP.hex()  # the probe
        out.log = cmds[:-1]
        return out

    def stop(self) -> None:
        if self.sniff is not None:
            assert self.sniff.stop() == 0, self.sniff.stderr.read_text()
        self.sw.stop()


@pytest.fixture(scope="module", params=["unix", "tcp"])
def targets(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"diff-{request.param}")
    ts = {name: Target(tmp, request.param, name) for name in TARGETS}
    yield ts
    for t in ts.values():
        t.stop()


def responses(data: bytes) -> list[bytes]:
    out = []
    while (n := response_length(data)) is not None and n >= 10:
        out.append(data[:n])
        data = data[n:]
    assert not data, f"trailing partial response {data.hex()}"
    return out


# scripts swtpm itself can take: all three must agree at both ends
SAME_AS_DIRECT = {
    "round trips, then half-close with one outstanding": [
        ("send", GETCAP),
        ("responses", 1),
        ("send", PCRREAD),
        ("shut_wr",),
        ("to_end",),
    ],
    "half-close right after the request": [("send", GETCAP), ("shut_wr",), ("to_end",)],
    "half-close with nothing outstanding": [
        ("send", PCRREAD),
        ("responses", 1),
        ("shut_wr",),
        ("to_end",),
    ],
    "close right after the request": [("send", GETCAP), ("close",)],
    "reset right after the request": [("send", PCRREAD), ("reset",)],
    "partial request, then half-close": [("send", GETCAP[:7]), ("shut_wr",), ("to_end",)],
}


@pytest.mark.parametrize("name", list(SAME_AS_DIRECT))
def test_same_as_direct(targets, name):
    script = SAME_AS_DIRECT[name]
    got = {t: targets[t].run(script) for t in TARGETS}
    d = got["direct"]
    for relay in ("python", "native"):
        r = got[relay]
        assert (r.received.hex(), r.end) == (d.received.hex(), d.end), (relay, name)
        assert r.log == d.log, (relay, name)


def _relays(targets, script):
    got = {t: targets[t].run(script) for t in ("python", "native")}
    p, n = got["python"], got["native"]
    assert (p.received.hex(), p.end, p.log) == (n.received.hex(), n.end, n.log)
    return p


def test_chunked_requests_go_whole(targets):
    out = _relays(targets, [("chunks", GETCAP, 5), ("responses", 1), ("shut_wr",), ("to_end",)])
    assert out.log == [GETCAP.hex()] and len(responses(out.received)) == 1
    assert out.end == "eof"


def test_pipelined_then_half_close_every_request_answered(targets):
    script = [("send", GETCAP * 3 + PCRREAD * 2), ("shut_wr",), ("to_end",)]
    out = _relays(targets, script)
    assert out.log == [GETCAP.hex()] * 3 + [PCRREAD.hex()] * 2
    assert len(responses(out.received)) == 5 and out.end == "eof"


def test_400_pipelined_after_a_round_trip_then_half_close(targets):
    """The case that cut the native relay at its 4,105-byte buffer: all 400 go, all 400
    answers reach the client, then EOF."""
    script = [("send", GETCAP), ("responses", 1), ("send", GETCAP * 400), ("shut_wr",)]
    out = _relays(targets, [*script, ("to_end",)])
    assert out.log == [GETCAP.hex()] * 401
    assert len(responses(out.received)) == 401 and out.end == "eof"


def test_stalled_reader_gets_everything(targets):
    """The client does not read while swtpm answers three pipelined requests, then reads."""
    t = {}

    def stall_until_executed(n):
        def wait(target):
            base = len(executed(target.sw.log))
            return lambda: wait_for(lambda: len(executed(target.sw.log)) >= base + n, 10)

        return wait

    for relay in ("python", "native"):
        target = targets[relay]
        waiter = stall_until_executed(3)(target)
        script = [("send", PCRREAD * 3), ("call", waiter), ("responses", 3), ("shut_wr",)]
        t[relay] = target.run([*script, ("to_end",)])
    assert t["python"].received == t["native"].received
    assert len(responses(t["native"].received)) == 3 and t["native"].end == "eof"


@pytest.mark.parametrize("how", ["close", "reset"])
def test_pipelined_then_gone_releases_swtpm(targets, how):
    """A client that leaves with 400 requests queued: swtpm's connection is closed at the
    first response it cannot take (a close) or at once (a reset): a request or two run
    after it left, as directly (swtpm runs what it read until a write fails), never the
    queue; the next client is served at once (Target.run). What ran before swtpm's log
    was read just after the close does not count (the client may have been preempted
    between its last response and its close: it was still there)."""
    for relay in ("python", "native"):
        target = targets[relay]
        at_close = []

        def mark(target=target, at_close=at_close):
            at_close.append(len(executed(target.sw.log)))

        before = len(executed(target.sw.log))
        script = [("send", GETCAP), ("responses", 1), ("send", GETCAP * 400), (how,)]
        out = target.run([*script, ("call", mark)])
        after = before + len(out.log) - at_close[0]
        assert 0 <= after <= 3, (relay, after, len(out.log))
