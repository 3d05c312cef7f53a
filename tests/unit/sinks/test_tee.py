"""The --pcap-tee sink on its own: a reader gets SHB + IDB first and then whole blocks; a
message far larger than the internal pipe never blocks the worker's frame() call."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace

from conftest import DATA, wait_for

from tpmsniff.inputs import frames_from_input
from tpmsniff.sinks.tee import TeeSink


def test_big_message_does_not_block_and_blocks_stay_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("TPMSNIFF_RUNTIME_DIR", str(tmp_path / "run"))
    f = next(iter(frames_from_input(str(DATA / "tpm2tools-workload.swtpm.log"))))
    tee = TeeSink(str(tmp_path / "tee.sock"), limit=8 << 20)
    r = socket.socket(socket.AF_UNIX)
    r.connect(str(tmp_path / "tee.sock"))
    wait_for(lambda: tee._readers, 10, "reader accepted")  # blocks go to readers present
    got = bytearray()

    def read() -> None:
        while chunk := r.recv(1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    done = threading.Event()

    def feed() -> None:
        tee.frame(replace(f, raw=b"\x80" * (3 << 20)))  # 3 MiB: 49 segments in one call
        done.set()

    threading.Thread(target=feed, daemon=True).start()
    assert done.wait(20), "frame() blocked on the tee"
    tee.close()
    reader.join(20)
    assert got[:4] == b"\x0a\x0d\x0d\x0a"
    off, blocks = 0, 0
    while off < len(got):
        off += int.from_bytes(got[off + 4 : off + 8], "little")
        blocks += 1
    assert off == len(got) and blocks > 49
