"""Fuzzing the offline front ends (issue 10): real captures and swtpm logs, mutated by
seeded hypothesis strategies, go through `tpmsniff decode` and `tpmsniff check`.

Every run must end with exit 0, 1 or 2, at most one line on stderr and no traceback.
Runs are in-process (the real `main`, stdout/stderr redirected) for speed; a handful go
through a subprocess to prove the real exit path. Inputs: the real swtpm logs in
tests/data, a pcapng written from one of them, and the same capture as classic pcap
(editcap).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
import tempfile

import pytest
from conftest import DATA, ROOT, require
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tpmsniff.cli import daemon

SEED = 20261201
EDGE_U32 = [0, 1, 4, 8, 11, 12, 16, 20, 24, 27, 28, 32, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz-inputs")
    pcapng = d / "workload.pcapng"
    log = DATA / "tpm2tools-workload.swtpm.log"
    assert run_inprocess(["decode", str(log), "--pcap", str(pcapng)])[0] == 0
    pcap = d / "workload.pcap"
    subprocess.run([require("editcap"), "-F", "pcap", str(pcapng), str(pcap)], check=True)
    out = {
        "pcapng": pcapng.read_bytes(),
        "pcap": pcap.read_bytes(),
        "statelog": (DATA / "stateblob.swtpm.log").read_bytes(),
        # the first part of the workload log: sessions, seal, unseal, kept small for speed
        "tpmlog": b"".join(log.read_bytes().splitlines(True)[:400]),
    }
    return out


def run_inprocess(argv: list[str]) -> tuple[int, str]:
    """The real `main`, with Python's stdout/stderr redirected and fd 2 too (C libraries
    such as tpm2-tss write there directly)."""
    err = io.StringIO()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as fd2:
        os.dup2(fd2.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    code = daemon.main(argv)
                except SystemExit as exc:  # argparse only
                    code = exc.code if isinstance(exc.code, int) else 2
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        fd2.seek(0)
        raw = fd2.read().decode("utf-8", "replace")
    return code, raw + err.getvalue()


@st.composite
def mutants(draw, inputs: dict[str, bytes]) -> tuple[str, bytes]:
    """One input with 1-4 mutations: bit flips, byte sets, truncation, deletion,
    insertion, and 32-bit fields (block lengths, sizes) set to edge values."""
    kind = draw(st.sampled_from(sorted(inputs)))
    buf = bytearray(inputs[kind])
    rnd = draw(st.randoms(use_true_random=False))  # positions spread over the whole file
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "delete", "insert", "u32"]))
        pos = rnd.randrange(max(len(buf), 1))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del buf[pos:]
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "u32" and len(buf) >= 4:
            pos = min(pos - pos % 4, len(buf) - 4)
            order = draw(st.sampled_from(["<I", ">I"]))
            buf[pos : pos + 4] = struct.pack(order, draw(st.sampled_from(EDGE_U32)))
    return kind, bytes(buf)


def assert_clean(code: int, err: str, what: str) -> None:
    assert code in (0, 1, 2), f"{what}: exit {code}: {err}"
    assert "Traceback" not in err, f"{what}: {err}"
    assert len(err.splitlines()) <= 1, f"{what}: {err}"


def _suffix(kind: str) -> str:
    return {"pcapng": ".pcapng", "pcap": ".pcap"}.get(kind, ".log")


def fuzz(inputs, tmp_path, seed_: int, examples: int, argv: list[str], what: str) -> None:
    """Run `tpmsniff WHAT INPUT argv...` in-process on `examples` seeded mutants."""
    path = tmp_path / "in"

    @seed(seed_)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(mutants(inputs))
    def run(m: tuple[str, bytes]) -> None:
        kind, data = m
        p = path.with_suffix(_suffix(kind))
        p.write_bytes(data)
        code, err = run_inprocess([what, str(p), *argv])
        assert_clean(code, err, f"{what} {kind} {data[:64].hex()}")

    run()


def test_decode_survives_mutated_inputs(inputs, tmp_path):
    fuzz(inputs, tmp_path, SEED, 600, ["--output", "jsonl"], "decode")


def test_check_survives_mutated_inputs(inputs, tmp_path):
    argv = ["--secret", "tpmsniff-secret-42", "--require-encrypted", "Unseal"]
    fuzz(inputs, tmp_path, SEED + 1, 450, argv, "check")


@pytest.mark.parametrize("kind", ["pcapng", "pcap", "statelog"])
def test_real_exit_path_of_damaged_inputs(inputs, tmp_path, kind):
    """A few damaged inputs through the real command: same promises in a real process."""
    data = inputs[kind]
    variants = [data[: len(data) // 2], data[:40] + b"\xff" * 40 + data[80:]]
    if kind == "pcapng":  # an enhanced packet block whose length is 12..24 (issue 10)
        off = 0
        while off < len(data):
            btype, blen = struct.unpack_from("<II", data, off)
            if btype == 6:
                short = struct.pack("<III", 6, 16, 0) + struct.pack("<I", 16)
                variants.append(data[:off] + short + data[off:])
                break
            off += blen
    for i, v in enumerate(variants):
        p = tmp_path / f"v{i}{_suffix(kind)}"
        p.write_bytes(v)
        for cmd in (["decode", str(p)], ["check", str(p), "--secret", "x-not-there"]):
            r = subprocess.run(
                [sys.executable, "-m", "tpmsniff", *cmd],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            assert_clean(r.returncode, r.stderr, f"{cmd[0]} {kind} variant {i}")


def test_short_epb_is_skipped_and_decoding_goes_on(inputs, tmp_path):
    """An EPB of 16 bytes used to raise struct.error: now one warning naming the file and
    offset, and the packets after it are still decoded."""
    data = inputs["pcapng"]
    off = 0
    while True:
        btype, blen = struct.unpack_from("<II", data, off)
        if btype == 6:
            break
        off += blen
    short = struct.pack("<III", 6, 16, 0) + struct.pack("<I", 16)
    p = tmp_path / "short.pcapng"
    p.write_bytes(data[:off] + short + data[off:])
    good = tmp_path / "good.pcapng"
    good.write_bytes(data)
    r = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", str(p), "--output", "jsonl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    ref = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", str(good), "--output", "jsonl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0 and len(r.stderr.splitlines()) == 1
    assert str(p) in r.stderr and f"byte {off}" in r.stderr
    strip = [line.split('"frame"')[1] for line in r.stdout.splitlines()]
    assert strip == [line.split('"frame"')[1] for line in ref.stdout.splitlines()]


def test_several_inputs_every_readable_one_decoded(inputs, tmp_path):
    good = tmp_path / "good.pcapng"
    good.write_bytes(inputs["pcapng"])
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"not a capture at all")
    log = tmp_path / "state.log"
    log.write_bytes(inputs["statelog"])
    r = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", str(bad), str(good), str(log)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("error:") == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert "rsp Unseal" in r.stdout and "CMD_GET_STATEBLOB" in r.stdout


def test_truncated_swtpm_log_warns_once_with_file_and_line(tmp_path):
    lines = (DATA / "tpm2tools-workload.swtpm.log").read_bytes().splitlines(True)
    cut = next(i for i, line in enumerate(lines) if b"SWTPM_IO_Write" in line) + 1
    p = tmp_path / "cut.log"
    p.write_bytes(b"".join(lines[: cut + 1]) + b"garbage line\n" + b"".join(lines[cut + 2 :]))
    code, err = run_inprocess(["decode", str(p)])
    assert code == 0 and len(err.splitlines()) == 1
    assert str(p) in err and "logged only in part" in err


def test_check_reads_every_readable_input_and_fails_closed(inputs, tmp_path):
    good = tmp_path / "good.pcapng"
    good.write_bytes(inputs["pcapng"])
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 40)
    code, err = run_inprocess(["check", str(bad), str(good), "--require-encrypted", "Unseal"])
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err
    r = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "check", str(bad), str(good), "--secret", "nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 2 and "INCOMPLETE" in r.stdout and "message(s)" in r.stdout
    assert r.stdout.split("message(s)")[0].split()[-1] != "0"  # the good one was read
