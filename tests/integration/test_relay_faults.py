"""The C relay facing failures it cannot prevent (issue 18, goal 0): the Nth malloc or
epoll_ctl of the daemon fails (a build with fault injection, TPMSNIFF_FAULT_MALLOC=N /
TPMSNIFF_FAULT_EPOLL=N; under `make sanitize` the ASan+UBSan build). Whatever N:

- the client gets whole, correct responses, then at most the start of one more and the
  end of its connection: the pair is closed, never carried on with bytes dropped, and
  the connection never waits for ever;
- the daemon goes on: the next client is served;
- a record that could not be made is counted: the daemon then exits 4 (and says so),
  and a run that exits 0 has every message in its capture.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
from conftest import start_sniff, start_swtpm
from helpers.scripted import GETCAP, play, response_length

pytestmark = pytest.mark.integration

ROUND_TRIPS = 8
CLIENTS = 3
MALLOC_POINTS = range(1, 13)
EPOLL_POINTS = range(1, 9)


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> str:
    given = os.environ.get("TPMSNIFF_SNIFF_TPMSNIFF_NATIVE")
    if given:
        return given
    from tpmsniff._native.build import build as compile_relay

    return str(compile_relay("faults", tmp_path_factory.mktemp("faults")))


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory):
    sw = start_swtpm(tmp_path_factory.mktemp("swtpm-faults"), "unix")
    yield sw
    sw.stop()


@pytest.fixture(scope="module")
def reference(swtpm) -> bytes:
    out = play(swtpm.data, [("send", GETCAP), ("responses", 1)])
    return out.received


def client(addr: str, ref: bytes) -> tuple[int, bool]:
    """ROUND_TRIPS GetCapabilities; (whole responses received, ended early)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)  # a connection left waiting for ever fails here
    s.connect(addr)
    got = b""
    n = 0
    try:
        for _ in range(ROUND_TRIPS):
            s.sendall(GETCAP)
            while response_length(got) is None:
                chunk = s.recv(65536)
                if not chunk:
                    assert ref.startswith(got), "bytes dropped or changed before the close"
                    return n, True
                got += chunk
            k = response_length(got)
            assert got[:k] == ref, "a response relayed wrong"
            got = got[k:]
            n += 1
    except (ConnectionResetError, BrokenPipeError):
        assert ref.startswith(got)
        return n, True
    finally:
        s.close()
    return n, False


@pytest.mark.parametrize(
    "fault,n",
    [("TPMSNIFF_FAULT_MALLOC", n) for n in MALLOC_POINTS]
    + [("TPMSNIFF_FAULT_EPOLL", n) for n in EPOLL_POINTS],
)
def test_failure_closes_the_pair_and_is_counted(tmp_path, build, swtpm, reference, fault, n):
    jsonl = tmp_path / "capture.jsonl"
    sniff = start_sniff(
        tmp_path,
        swtpm.data,
        pcap=False,
        extra=["--console", "none", "--listen-ctrl", "none", "--jsonl", str(jsonl)],
        env={"TPMSNIFF_NATIVE": build, fault: str(n)},
    )
    exchanged = 0
    early = 0
    for _ in range(CLIENTS):
        got, ended = client(sniff.listen, reference)
        exchanged += got
        early += ended
    served, ended = client(sniff.listen, reference)  # the daemon goes on
    exchanged += served
    code = sniff.stop()
    err = sniff.stderr.read_text()
    lost = "native relay could not record messages" in err
    assert code in (0, 4), err
    assert (code == 4) == lost, err
    if code == 0:
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line]
        assert len(records) >= 2 * exchanged, (len(records), exchanged)
