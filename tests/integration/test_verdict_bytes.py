"""Issue #17: the verdict reads the bytes, not the flags. Real swtpm behind a tpmsniff
daemon; clients that misbehave are raw commands (tests/helpers/rawtpm.py): a slot-2
decrypt session beside a password session whose Create inSensitive goes in clear
(salted and unsalted, AES and XOR), or is random bytes; and a harness that
context-swaps every object and session like the kernel resource manager.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest
from conftest import start_sniff, start_swtpm
from helpers.rawtpm import create_slot2, rm_swapped
from helpers.scenarios import SECRET, seal_unseal

from tpmsniff.cli.check import main as check_main
from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction, Frame, Verdict

pytestmark = pytest.mark.integration

RC_SIZE_PARAM1 = 0x1D5  # TPM_RC_SIZE, parameter 1


def check(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = check_main([str(a) for a in argv])
    return rc, out.getvalue()


def last(fs: list[Frame], name: str, d: Direction) -> Frame:
    return [f for f in fs if f.name == name and f.direction is d][-1]


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    sw = start_swtpm(tmp_path_factory.mktemp("bytes"), "unix")
    yield sw
    sw.stop()


@dataclass(frozen=True)
class Case:
    kind: str
    salted: bool
    sym: str
    garbage: bool
    verdict: Verdict  # of the Create command
    secret_rc: int
    sensitive_rc: int
    strength: str


CASES = [
    Case("clear-unsalted-aes", False, "aes", False, Verdict.PLAINTEXT, 1, 1, "despite the decrypt"),
    Case("clear-unsalted-xor", False, "xor", False, Verdict.PLAINTEXT, 1, 1, "despite the decrypt"),
    Case("clear-salted-aes", True, "aes", False, Verdict.PLAINTEXT, 1, 1, "despite the decrypt"),
    Case("clear-salted-xor", True, "xor", False, Verdict.PLAINTEXT, 1, 1, "despite the decrypt"),
    Case(
        "random-unsalted-aes",
        False,
        "aes",
        True,
        Verdict.UNKNOWN,
        0,
        1,
        "decrypted bytes do not parse as TPMS_SENSITIVE_CREATE",
    ),
    Case("random-salted-aes", True, "aes", True, Verdict.ENCRYPTED, 0, 0, "salted by primary"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_slot2_decrypt_session(case: Case, tpm, tmp_path):
    sniff = start_sniff(tmp_path, tpm.data, name=case.kind, extra=["--console", "none"])
    try:
        rc = create_slot2(sniff.tcti, case.salted, case.sym, garbage=case.garbage)
    finally:
        sniff.stop()
    assert rc == RC_SIZE_PARAM1  # the TPM decrypted what it got and could not parse it
    fs = list(frames_from_input(str(sniff.pcap), Annotator()))
    p = last(fs, "Create", Direction.COMMAND).tpm.param
    assert p.verdict is case.verdict, p.word
    assert case.strength in (p.strength or ""), p.word
    if case.verdict is Verdict.PLAINTEXT:
        assert p.plaintext == "parsed" and p.recovered is None
        assert p.proof == (None if case.salted else "hmac"), p.word  # the key, not the bytes
        assert ("salted by primary" in p.strength) is case.salted
    rsp = last(fs, "Create", Direction.RESPONSE).tpm.param
    assert rsp.note and "TPM answered TPM_RC_SIZE" in rsp.note, rsp.word

    rc1, out1 = check(sniff.pcap, "--secret", SECRET.decode())
    assert rc1 == case.secret_rc, out1
    assert "in the raw file" not in out1  # a finding, once, where it is
    rc2, out2 = check(sniff.pcap, "--sensitive")
    assert rc2 == case.sensitive_rc, out2
    if case.verdict is Verdict.PLAINTEXT:
        assert "Create inSensitive.data readable by an observer (in clear despite" in out2
        assert "Create inSensitive.userAuth readable by an observer (in clear despite" in out2
    if case.verdict is Verdict.UNKNOWN:
        assert "encryption cannot be judged" in out2


def test_self_annotation_is_not_a_finding(tpm, tmp_path):
    """The `recovered=` comment tpmsniff writes into its capture is its own annotation:
    the secret recovered by decryption is reported once per message, with frame, field
    and proof, and never again as 'found in the raw file'."""
    sniff = start_sniff(tmp_path, tpm.data, name="self", extra=["--console", "none"])
    try:
        assert seal_unseal(sniff.tcti, "unsalted") == SECRET
    finally:
        sniff.stop()
    assert SECRET.hex().encode() in sniff.pcap.read_bytes()  # the comment holds it
    rc, out = check(sniff.pcap, "--secret", SECRET.decode())
    assert rc == 1
    lines = [ln for ln in out.splitlines() if "secret #1" in ln]
    assert lines and not [ln for ln in lines if "raw file" in ln], out
    recovered = [ln for ln in lines if "recovered by decrypting" in ln]
    assert len(recovered) == len(lines) == 2, out  # Create inSensitive, Unseal outData
    assert all("proof=hmac" in ln and "frame " in ln for ln in recovered), out
    assert any("inSensitive (recovered by decryption)" in ln for ln in recovered), out
    assert any("outData (recovered by decryption)" in ln for ln in recovered), out


def test_context_swaps_keep_key_provenance(tpm, tmp_path):
    sniff = start_sniff(tmp_path, tpm.data, name="rm", extra=["--console", "none"])
    try:
        assert rm_swapped(sniff.tcti) == SECRET
    finally:
        sniff.stop()
    fs = list(frames_from_input(str(sniff.pcap), Annotator()))
    loads = [f for f in fs if f.name == "ContextLoad" and f.direction is Direction.RESPONSE]
    handles = {f.tpm.handles[0] for f in loads if f.tpm.handles[0] >> 24 == 0x80}
    assert len(handles) >= 2  # the primary was renumbered
    want = "salted by primary key in owner hierarchy, context-loaded"
    for name, d in (("Create", Direction.COMMAND), ("Unseal", Direction.RESPONSE)):
        p = last(fs, name, d).tpm.param
        assert p.verdict is Verdict.ENCRYPTED and want in p.strength, p.word
    assert check(sniff.pcap, "--secret", SECRET.decode())[0] == 0
    assert check(sniff.pcap, "--sensitive")[0] == 0


def test_an_altered_capture_still_fails_on_its_annotations(tpm, tmp_path):
    """Flip the first ciphertext byte of every decrypted parameter: no decoded message
    gives the secret any more, but tpmsniff's own comments still hold it (hex), so the
    check does not pass."""
    sniff = start_sniff(tmp_path, tpm.data, name="altered", extra=["--console", "none"])
    try:
        assert seal_unseal(sniff.tcti, "unsalted") == SECRET
    finally:
        sniff.stop()
    data = bytearray(sniff.pcap.read_bytes())
    for f in frames_from_input(str(sniff.pcap), Annotator()):
        p = f.tpm.param if f.tpm is not None else None
        if p is not None and p.recovered is not None:
            at = bytes(data).index(f.raw) + f.prefix + p.offset + 2
            data[at] ^= 0xFF
    altered = tmp_path / "altered.pcapng"
    altered.write_bytes(bytes(data))
    rc, out = check(altered, "--secret", SECRET.decode())
    assert rc == 1, out
    assert "found in tpmsniff's own annotation at offset" in out, out
