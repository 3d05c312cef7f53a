"""The checker and its reports, on frames decoded from bytes recorded from a real
tpm2-tools run against swtpm (tests/data): the sealed secret "tpmsniff-secret-42" crosses
in clear there (tpm2-tools' default sessions do not encrypt)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from conftest import DATA
from helpers.scenarios import SECRET as SEALED

from tpmsniff.check.checker import Checker
from tpmsniff.check.findings import field_at
from tpmsniff.check.reports import write_json, write_junit
from tpmsniff.check.requirements import Requirement
from tpmsniff.check.secrets import Secret
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction

LOG = str(DATA / "tpm2tools-workload.swtpm.log")
SECRET = b"tpmsniff-secret-42"


@pytest.fixture(scope="module")
def frames():
    return list(frames_from_input(LOG))


def run(frames, **kw) -> Checker:
    c = Checker(**kw)
    for f in frames:
        c.feed(f)
    c.finish()
    return c


def test_secret_in_clear_is_found_and_its_field_named(frames):
    c = run(frames, secrets=[Secret(SECRET)])
    assert c.failed
    fields = {(f.command, f.direction, f.field) for f in c.findings if f.kind == "secret"}
    assert ("Unseal", "response", "parameter[0] TPM2B_SENSITIVE_DATA") in fields
    assert any(cmd == "Create" and d == "command" for cmd, d, _ in fields)


@pytest.mark.parametrize(
    "encode", [bytes.hex, lambda v: v.hex().upper(), lambda v: base64.b64encode(v).decode()]
)
def test_encoded_secrets_are_found(frames, encode):
    """A secret sealed as its hex or base64 text is found by searching for the raw value's
    encodings."""
    text = encode(SECRET).encode()
    f = next(f for f in frames if SECRET in f.raw)
    doctored = [replace(f, raw=f.raw + text)]
    c = run(doctored, secrets=[Secret(SECRET)])
    assert sum(1 for x in c.findings if x.kind == "secret") >= 2


def test_secret_split_across_two_messages_is_found(frames):
    f = next(f for f in frames if f.direction is Direction.COMMAND and f.tpm is not None)
    cut = len(SECRET) // 2
    a = replace(f, raw=b"x" * 20 + SECRET[:cut])
    b = replace(f, raw=SECRET[cut:] + b"y" * 20)
    c = run([a, b], secrets=[Secret(SECRET)])
    assert [x.field for x in c.findings if x.kind == "secret"] == ["stream"]


def test_absent_secret_passes(frames):
    c = run(frames, secrets=[Secret(b"never-on-the-bus")])
    assert not c.failed


def test_empty_capture_fails_unless_allowed():
    assert run([], secrets=[Secret(SECRET)]).failed
    assert not run([], secrets=[Secret(SECRET)], allow_empty=True).failed


def test_requirements(frames):
    unseal = Requirement.parse("unseal")
    assert unseal.direction is Direction.RESPONSE and unseal.name == "Unseal"
    assert Requirement.parse("Create").direction is Direction.COMMAND
    c = run(frames, requires=[unseal])
    assert [f.kind for f in c.findings] == ["not-encrypted"] * len(c.findings) and c.findings
    never = run(frames, requires=[Requirement.parse("Import")])
    assert [f.kind for f in never.findings] == ["not-seen"]
    for bad in ("NoSuchCommand", "GetRandom:sideways", "Startup"):
        with pytest.raises(ValueError):
            Requirement.parse(bad)


def test_field_at_names_every_region(frames):
    f = next(
        f
        for f in frames
        if f.name == "Create" and f.direction is Direction.COMMAND and f.tpm.sessions
    )
    assert field_at(f, 0) == "header"
    assert field_at(f, 10) == "handle[0]"
    assert field_at(f, 14) == "authorizationSize"
    assert field_at(f, 18).startswith("session[0]")
    p = f.tpm.param
    assert field_at(f, p.offset + 2) == "parameter[0] TPM2B_SENSITIVE_CREATE"


def test_reports(frames, tmp_path):
    c = run(frames, secrets=[Secret(SECRET)], requires=[Requirement.parse("Unseal")])
    write_json(str(tmp_path / "r.json"), c, len(frames), [LOG])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["result"] == "fail" and report["messages"] == len(frames)
    assert len(report["findings"]) == len(c.findings)
    assert {"kind", "message", "frame"} <= set(report["findings"][0])
    write_junit(str(tmp_path / "r.xml"), c, [LOG])
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [case.find("failure") is not None for case in cases] == [False, True, True]


def test_raw_scan_in_chunks_counts_each_occurrence_once():
    from tpmsniff.check.checker import Checker

    data = b"x" * 5 + SEALED + b"y" * 3 + SEALED + SEALED.hex().encode() + b"z"
    for size in (1, 2, 7, len(SEALED) - 1, len(SEALED), 1000):
        c = Checker([Secret(SEALED)])
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        found = c.scan_raw("f", chunks)
        msgs = sorted(f.message for f in found)
        assert len(msgs) == 2, (size, msgs)
        assert "(hex-encoded) found in the raw file at offset 60" in msgs[0]
        assert msgs[1].endswith("found in the raw file at offset 5, outside any decoded message")
