"""Session verdicts over a matrix of session scenarios: real clients, real swtpm, tpmsniff
in between.

Each scenario runs through a tpmsniff daemon writing a capture; `tpmsniff check` then
judges the capture, and the verdicts on the frames are asserted directly too.
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import ROOT, run_tool, start_sniff, start_swtpm, tpmsniff_cmd
from helpers.fieldcheck import check_capture
from helpers.scenarios import SECRET, nv_roundtrip, seal_unseal
from helpers.workload import tools_seal_unseal

from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction, Verdict
from tpmsniff.sinks.pcapng import PcapngSink

pytestmark = pytest.mark.integration


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tpmsniff_cmd(), "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    sw = start_swtpm(tmp_path_factory.mktemp("sessions"), "unix")
    yield sw
    sw.stop()


@pytest.fixture(scope="module")
def captured(tpm, tmp_path_factory):
    """Run every ESAPI scenario through its own tpmsniff capture (one daemon each)."""
    tmp = tmp_path_factory.mktemp("captures")
    out = {}
    for kind in ("password", "salted", "unsalted", "xor", "xor-salted", "bound", "policy"):
        sniff = start_sniff(tmp, tpm.data, name=kind, extra=["--console", "none"])
        try:
            assert seal_unseal(sniff.tcti, kind) == SECRET
        finally:
            assert sniff.stop() == 0
        out[kind] = sniff.pcap
    for name, enc, index in (("nv-plain", False, 0x01500030), ("nv-enc", True, 0x01500031)):
        sniff = start_sniff(tmp, tpm.data, name=name, extra=["--console", "none"])
        try:
            assert nv_roundtrip(sniff.tcti, enc, index) == SECRET
        finally:
            sniff.stop()
        out[name] = sniff.pcap
    return out


def frames(pcap):
    return list(frames_from_input(str(pcap), Annotator()))


def one(pcap, name: str, direction: Direction):
    fs = [
        f
        for f in frames(pcap)
        if f.name == name
        and f.direction is direction
        and (direction is Direction.COMMAND or f.tpm.code == 0)
    ]
    assert fs, f"no successful {name} {direction}"
    return fs[-1]


REQ = ["--require-encrypted", "Create", "--require-encrypted", "Unseal"]


def test_password_sessions_flagged(captured):
    pcap = captured["password"]
    assert one(pcap, "Create", Direction.COMMAND).verdict is Verdict.PLAINTEXT
    assert one(pcap, "Unseal", Direction.RESPONSE).verdict is Verdict.PLAINTEXT
    assert all(s.is_password for s in one(pcap, "Unseal", Direction.COMMAND).tpm.sessions)
    p = check(pcap, "--secret", SECRET.decode(), *REQ)
    assert p.returncode == 1
    assert "Create command" in p.stdout and "field parameter[0] TPM2B_SENSITIVE_CREATE" in p.stdout
    assert "Unseal response" in p.stdout and "NOT-ENCRYPTED" in p.stdout


def test_salted_aes_cfb_passes(captured, tmp_path):
    pcap = captured["salted"]
    create = one(pcap, "Create", Direction.COMMAND)
    assert create.verdict is Verdict.ENCRYPTED
    assert create.tpm.param.strength == "AES-128-CFB, salted by primary key in owner hierarchy"
    facts = create.tpm.sessions[0].facts
    assert facts.salted and not facts.bound and facts.salt_key == "primary key in owner hierarchy"
    assert (
        one(pcap, "Unseal", Direction.RESPONSE).tpm.param.word
        == "ENCRYPTED(AES-128-CFB, salted by primary key in owner hierarchy)"
    )
    p = check(
        pcap,
        "--secret",
        SECRET.decode(),
        *REQ,
        "--json",
        tmp_path / "r.json",
        "--junit",
        tmp_path / "r.xml",
    )
    assert p.returncode == 0, p.stdout
    assert json.loads((tmp_path / "r.json").read_text())["result"] == "pass"
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 4


def test_unsalted_unbound_is_weak_and_decrypted(captured):
    pcap = captured["unsalted"]
    rsp = one(pcap, "Unseal", Direction.RESPONSE)
    assert rsp.verdict is Verdict.WEAK
    assert rsp.tpm.param.recovered == SECRET  # what the client sealed, recovered off the wire
    create = one(pcap, "Create", Direction.COMMAND)
    assert create.verdict is Verdict.WEAK and SECRET in create.tpm.param.recovered
    assert SECRET not in create.raw  # the wire itself carries ciphertext
    p = check(pcap, "--secret", SECRET.decode(), *REQ, "--allow-weak")
    assert p.returncode == 1 and "recovered by decrypting a weak session" in p.stdout
    assert "WEAK:" not in p.stdout  # --allow-weak: weakness alone is not a finding


def test_recovered_parameter_decoded_into_fields(captured):
    """The plaintext of a WEAK parameter is decoded into fields, marked."""
    pcap = captured["unsalted"]
    create = one(pcap, "Create", Direction.COMMAND)
    first = create.tpm.fields.parameters[0]
    assert first.name == "inSensitive" and first.recovered and not first.encrypted
    data = first.children[1].children[1]  # sensitive.data
    assert data.name == "data" and data.value == SECRET
    rsp = one(pcap, "Unseal", Direction.RESPONSE)
    out = rsp.tpm.fields.parameters[0]
    assert out.name == "outData" and out.recovered and out.value == SECRET
    salted = one(captured["salted"], "Unseal", Direction.RESPONSE).tpm.fields.parameters[0]
    assert salted.encrypted and not salted.recovered and salted.value != SECRET


def test_every_scenario_capture_decodes_exactly(captured):
    for kind, pcap in captured.items():
        counts = check_capture(str(pcap))
        assert counts["messages"] > 10 and counts["errors"] == counts["header_only"] == 0, kind


def test_xor_sessions(captured):
    weak = one(captured["xor"], "Unseal", Direction.RESPONSE)
    assert weak.verdict is Verdict.WEAK and weak.tpm.param.recovered == SECRET
    assert "XOR-SHA256" in weak.tpm.param.strength
    salted = one(captured["xor-salted"], "Unseal", Direction.RESPONSE)
    assert salted.verdict is Verdict.ENCRYPTED
    assert salted.tpm.param.strength == "XOR-SHA256, salted by primary key in owner hierarchy"


def test_bound_session(captured):
    """Bound to a primary key with an empty authValue: the sessionKey derives from wire
    data alone, and the session's HMAC proves it (issue #9)."""
    rsp = one(captured["bound"], "Unseal", Direction.RESPONSE)
    assert rsp.verdict is Verdict.WEAK and rsp.tpm.param.proof == "hmac"
    assert rsp.tpm.param.recovered == SECRET
    assert "bound to 0x80000000, empty authValue" in rsp.tpm.param.strength


def test_policy_session(captured):
    rsp = one(captured["policy"], "Unseal", Direction.RESPONSE)
    assert rsp.tpm.sessions[0].facts.type == "policy"
    assert rsp.verdict is Verdict.WEAK and rsp.tpm.param.recovered == SECRET


def test_nv_with_and_without_encryption(captured):
    plain, enc = captured["nv-plain"], captured["nv-enc"]
    assert one(plain, "NV_Write", Direction.COMMAND).verdict is Verdict.PLAINTEXT
    assert one(plain, "NV_Read", Direction.RESPONSE).verdict is Verdict.PLAINTEXT
    assert (
        one(enc, "NV_Write", Direction.COMMAND).tpm.param.word
        == "ENCRYPTED(AES-128-CFB, salted by primary key in owner hierarchy)"
    )
    assert one(enc, "NV_Read", Direction.RESPONSE).verdict is Verdict.ENCRYPTED
    nv = ["--require-encrypted", "NV_Write", "--require-encrypted", "NV_Read"]
    assert check(enc, "--secret", SECRET.decode(), *nv).returncode == 0
    assert check(plain, "--secret", SECRET.decode(), *nv).returncode == 1


def test_tpm2_tools_default_leaks_and_sessions_fix_it(tpm, tmp_path):
    """tpm2-tools 5.4 defaults: an unsalted HMAC session without encrypt/decrypt: the
    sealed secret goes in clear in Create and comes back in clear from Unseal."""
    sniff = start_sniff(tmp_path, tpm.data, name="tools", extra=["--console", "none"])
    w = tmp_path / "w"
    w.mkdir()

    def t(*a, input=None):
        return run_tool(list(a), sniff.tcti, w, input).stdout

    try:
        assert tools_seal_unseal(t, SECRET) == SECRET
        # now with a salted session and parameter encryption for the unseal
        t("tpm2_load", "-Q", "-C", "prim.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "s.ctx")
        t("tpm2_flushcontext", "-t")
        t("tpm2_startauthsession", "--hmac-session", "-c", "prim.ctx", "-S", "sess.ctx")
        t("tpm2_flushcontext", "-t")
        t("tpm2_sessionconfig", "sess.ctx", "--enable-encrypt")
        assert t("tpm2_unseal", "-c", "s.ctx", "-S", "sess.ctx") == SECRET
        t("tpm2_flushcontext", "sess.ctx")
        t("tpm2_flushcontext", "-t")
    finally:
        sniff.stop()
    unseals = [
        f for f in frames(sniff.pcap) if f.name == "Unseal" and f.direction is Direction.RESPONSE
    ]
    assert [f.verdict for f in unseals] == [Verdict.PLAINTEXT, Verdict.ENCRYPTED]
    assert "salted by" in unseals[1].tpm.param.strength
    p = check(sniff.pcap, "--secret", SECRET.decode())
    assert p.returncode == 1
    assert "Create command" in p.stdout and "Unseal response" in p.stdout
    assert p.stdout.count("in clear") == 2  # Create (default) and the first Unseal


def test_live_check_flags_and_exits_nonzero(tpm, tmp_path):
    sniff = start_sniff(
        tmp_path, tpm.data, name="live", extra=["--console", "summary", "--secret", SECRET.decode()]
    )
    assert seal_unseal(sniff.tcti, "password") == SECRET
    assert sniff.stop() == 1
    assert "!!! SECRET: secret" in sniff.console()
    assert any(e.get("event") == "check violation" for e in sniff.log_events())


def test_pytest_plugin(tpm, tpmsniff_proxy):
    sniffed = tpmsniff_proxy(tpm.data)
    assert seal_unseal(sniffed.tcti, "salted") == SECRET
    sniffed.assert_no_plaintext(SECRET)
    sniffed.assert_encrypted("Create")
    sniffed.assert_encrypted("Unseal", "response")
    leaky = tpmsniff_proxy(tpm.data)
    assert seal_unseal(leaky.tcti, "password") == SECRET
    with pytest.raises(AssertionError, match="in clear"):
        leaky.assert_no_plaintext(SECRET)
    with pytest.raises(AssertionError, match="PLAINTEXT"):
        leaky.assert_encrypted("Unseal")


def test_empty_and_corrupt_captures(tmp_path):
    empty = tmp_path / "empty.pcapng"
    PcapngSink(str(empty)).close()
    p = check(empty, "--secret", "absent-secret-7")
    assert p.returncode == 1 and "no TPM messages" in p.stdout
    assert check(empty, "--secret", "absent-secret-7", "--allow-empty").returncode == 0
    p = check(empty, "--require-encrypted", "Unseal", "--allow-empty")
    assert p.returncode == 0
    garbage = tmp_path / "garbage.pcapng"
    garbage.write_bytes(b"this is not a capture at all")
    p = check(garbage, "--secret", "absent-secret-7")
    assert (
        p.returncode == 2
        and len(p.stderr.strip().splitlines()) == 1
        and "Traceback" not in p.stderr
    )
    good = tmp_path / "good.pcapng"
    PcapngSink(str(good)).close()
    truncated = tmp_path / "truncated.pcapng"
    truncated.write_bytes(good.read_bytes()[:-7])
    p = check(truncated, "--secret", "absent-secret-7")
    assert p.returncode == 2 and "truncated" in p.stderr
    p = check(tmp_path / "missing.pcapng", "--secret", "absent-secret-7")
    assert p.returncode == 2 and "missing.pcapng" in p.stderr
    assert check(empty).returncode == 2  # nothing to check is a usage error
    assert check(empty, "--require-encrypted", "Bogus").returncode == 2
