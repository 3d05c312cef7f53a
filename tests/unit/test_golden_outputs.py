"""`tpmsniff decode` prints and writes exactly what it did before the capture-cost work
(issue 18): the SHA-256 of every output (--output jsonl, tree, summary, console, with and
without --auth, and the --pcap file after its section header, which names the version)
for every recording in tests/data, against tests/data/golden-decode.json.

The digests were taken with the code before the fast paths (struct-packed pcapng,
decode caches, struct TCP reading, cached JSON and comments). An intended change of an
output regenerates them: TPMSNIFF_REGOLD=1 pytest tests/unit/test_golden_outputs.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout

import pytest
from conftest import DATA

from tpmsniff.cli.decode import main

GOLDEN = DATA / "golden-decode.json"
INPUTS = sorted(p.name for p in DATA.iterdir() if p.suffix in (".pcapng", ".log"))
FORMATS = ("jsonl", "tree", "summary", "console")
AUTH = ["--auth", "0x80000000=primary-auth-5150"]  # helpers/scenarios.py PRIMARY_AUTH


def _after_shb(data: bytes) -> bytes:
    return data[int.from_bytes(data[4:8], "little") :]


def outputs(tmp_path, name: str, fmt: str, auth: bool) -> dict[str, str]:
    """Run from tests/data with the bare name: JSON Lines names the input as given."""
    pcap = tmp_path / f"{name}.{fmt}.pcapng"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([name, "--output", fmt, "--pcap", str(pcap), *(AUTH if auth else [])])
    sha = hashlib.sha256
    return {
        "rc": str(rc),
        "stdout": sha(out.getvalue().encode()).hexdigest(),
        "pcap": sha(_after_shb(pcap.read_bytes())).hexdigest(),
    }


@pytest.mark.parametrize("name", INPUTS)
def test_decode_outputs_are_unchanged(tmp_path, monkeypatch, name):
    monkeypatch.chdir(DATA)
    got = {
        f"{fmt}{' --auth' if auth else ''}": outputs(tmp_path, name, fmt, auth)
        for fmt in FORMATS
        for auth in (False, True)
    }
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("TPMSNIFF_REGOLD"):
        golden[name] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert got == golden[name]
