"""Every command swtpm implements, through tpmsniff, decoded field by field and
exactly; field values spot-checked against the bytes; the live pcapng stream read by
tshark from a pipe while the workload runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port, require, run_tool, start_sniff, start_swtpm, wait_for
from helpers.fieldcheck import check_capture
from helpers.workload_all import NV_BASE, all_commands

from tpmsniff.codec.tpm import cc_name
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("all-commands")
    sw = start_swtpm(tmp, "tcp")
    jsonl = tmp / "sniff" / "live.jsonl"
    (tmp / "sniff").mkdir()
    sniff = start_sniff(tmp, sw.data, extra=["--console", "none", "--jsonl", str(jsonl)])
    try:
        broken = all_commands(sniff.tcti)
    finally:
        rc = sniff.stop()
        sw.stop()
    assert rc == 0
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    yield {"pcap": str(sniff.pcap), "broken": broken, "jsonl": lines}


def implemented_commands(pcap: str) -> set[str]:
    """What swtpm says it implements: its GetCapability(TPM_CAP_COMMANDS) answers, as
    tpmsniff decoded them from the capture."""
    names: set[str] = set()
    for f in frames_from_input(pcap):
        fs = f.tpm.fields if f.tpm is not None else None
        if f.name != "GetCapability" or f.direction is not Direction.RESPONSE or fs is None:
            continue
        cap, data = fs.parameters[1].children
        if cap.text == "TPM2_CAP_COMMANDS":
            for attrs in data.children[1].children:  # TPML_CCA: count, commandAttributes
                a = attrs.value
                assert isinstance(a, int) and attrs.type == "TPMA_CC"
                names.add(cc_name(a & 0xFFFF | (0x20000000 if a >> 29 & 1 else 0)))
    return names


def test_every_command_decodes_exactly(everything):
    assert everything["broken"] == []  # every ESAPI call reached the TPM (or ESYS said why)
    counts = check_capture(everything["pcap"])  # fields tile every message, re-marshal exact
    assert counts["errors"] == 0 and counts["header_only"] == 0
    implemented = implemented_commands(everything["pcap"])
    assert len(implemented) > 100
    issued = {
        f.name
        for f in frames_from_input(everything["pcap"])
        if f.tpm is not None and f.direction is Direction.COMMAND
    }
    assert implemented - issued == set()


def _first(lines, command, direction="command"):
    return next(x for x in lines if x.get("command") == command and x["direction"] == direction)


def test_live_jsonl_field_values_match_the_bytes(everything):
    lines = everything["jsonl"]
    assert all("fields" in x for x in lines if x["channel"] == "tpm")
    ext = _first(lines, "PCR_Extend")
    assert ext["fields"]["handles"] == {"pcrHandle": 16}
    digests = ext["fields"]["parameters"]["digests"]
    assert digests["count"] == 1
    d = digests["digests"][0]
    assert d == {"hashAlg": "TPM2_ALG_SHA256", "digest": hashlib.sha256(b"m").hexdigest()}
    assert d["digest"] in ext["hex"]  # and it is where the bytes are
    cap = _first(lines, "GetCapability")["fields"]["parameters"]
    assert cap == {"capability": "TPM2_CAP_ALGS", "property": 0, "propertyCount": 64}
    clock = _first(lines, "ClockRateAdjust")["fields"]
    assert clock["handles"] == {"auth": 0x40000001}
    assert clock["parameters"] == {"rateAdjust": "TPM2_CLOCK_MEDIUM_SLOWER"}
    assert ext["hex"].endswith(hashlib.sha256(b"m").hexdigest())
    curve = _first(lines, "ECC_Parameters", "response")["fields"]["parameters"]["parameters"]
    assert curve["curveID"] == "TPM2_ECC_NIST_P256" and curve["keySize"] == 256
    prim = _first(lines, "CreatePrimary")["fields"]["parameters"]["inPublic"]["publicArea"]
    assert prim["type"] == "TPM2_ALG_ECC"
    assert prim["objectAttributes"].split("|")[-2:] == ["restricted", "decrypt"]
    assert prim["parameters"]["curveID"] == "TPM2_ECC_NIST_P256"
    nv = [x for x in lines if x.get("command") == "NV_Write" and x["direction"] == "command"]
    w = nv[0]["fields"]
    assert w["handles"]["nvIndex"] == NV_BASE
    assert bytes.fromhex(w["parameters"]["data"]) == b"nv data " * 4
    assert w["parameters"]["offset"] == 0
    special = _first(lines, "NV_UndefineSpaceSpecial")
    assert special["cc"] == 0x11F and list(special["fields"]["handles"]) == ["nvIndex", "platform"]
    read = _first(lines, "ReadClock", "response")["fields"]["parameters"]["currentTime"]
    assert read["clockInfo"]["safe"] in ("TPM2_YES", "TPM2_NO")


def test_tree_and_summary_of_the_capture(everything):
    p = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", "--output", "tree", everything["pcap"]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "decode failed" not in p.stdout and "header-only" not in p.stdout
    assert "      curveID: TPM2_ECC_CURVE = TPM2_ECC_NIST_P256 (0x0003)" in p.stdout
    assert "| PCR_Extend pcr=16 sha256=" in p.stdout
    assert "| CreatePrimary owner ecc nist_p256 restricted|decrypt" in p.stdout


def _tshark_live(args: list[str], out, stdin=None) -> subprocess.Popen:
    cmd = [require("tshark"), *args, "-l", "-T", "fields", "-e", "frame.comment"]
    return subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=subprocess.DEVNULL)


def test_pcap_to_fifo_and_stdout_read_live_by_tshark(tmp_path):
    """tshark reads the capture from a named pipe and from tpmsniff's stdout, and shows
    each message while tpmsniff is still running."""
    require("tpm2_getrandom")
    sw = start_swtpm(tmp_path, "tcp")
    fifo = tmp_path / "live.pipe"
    os.mkfifo(fifo, 0o600)
    seen = tmp_path / "tshark-fifo.txt"
    with seen.open("w") as out:
        shark = _tshark_live(["-i", str(fifo)], out)
    sniff = start_sniff(tmp_path, sw.data, extra=["--console", "none", "--pcap", str(fifo)])
    try:
        run_tool(["tpm2_getrandom", "8"], sniff.tcti, tmp_path)
        wait_for(lambda: "cmd GetRandom" in seen.read_text(), 30, "tshark shows GetRandom")
        assert sniff.proc.poll() is None  # live: tpmsniff still runs
    finally:
        sniff.stop()
        shark.wait(30)
    assert "| GetRandom 8" in seen.read_text()

    # --pcap -: the capture on stdout, the console on stderr
    seen2 = tmp_path / "tshark-stdout.txt"
    port_sniff = tmp_path / "stdout"
    port_sniff.mkdir()
    port = free_port(pair=True)
    err = (port_sniff / "err.txt").open("w")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tpmsniff",
            "--listen",
            f"tcp:127.0.0.1:{port}",
            "--upstream",
            sw.data,
            "--pcap",
            "-",
            "--console",
            "summary",
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=err,
        cwd=ROOT,
    )
    with seen2.open("w") as out:
        shark2 = _tshark_live(["-i", "-"], out, stdin=daemon.stdout)
    assert daemon.stdout is not None
    daemon.stdout.close()
    try:
        text = port_sniff / "err.txt"
        wait_for(lambda: '"ready"' in text.read_text(), 20, "tpmsniff ready")
        run_tool(["tpm2_getrandom", "4"], f"swtpm:host=127.0.0.1,port={port}", tmp_path)
        wait_for(lambda: "| GetRandom 4" in seen2.read_text(), 30, "tshark shows GetRandom")
        assert daemon.poll() is None
        assert "cmd GetRandom" in text.read_text()  # the console, on stderr
    finally:
        daemon.terminate()
        daemon.wait(20)
        shark2.wait(30)
        err.close()
        sw.stop()
