"""Issue 19.3: the shipped Lua post-dissector, run by real tshark, turns every comment of a
tpmsniff capture into tpmsniff.* fields that agree, frame by frame, with tpmsniff's own
decode of the same capture; the shipped colouring rules colour PLAINTEXT and WEAK frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import DATA, require

from tpmsniff.wireshark import COLORFILTERS, LUA

pytestmark = pytest.mark.integration

CAPTURES = sorted(DATA.glob("*.pcapng"))
FIELDS = ("frame.number", "tpmsniff.verdict", "tpmsniff.proof", "tpmsniff.recovered")
FIELDS += ("tpmsniff.session", "tpmsniff.finding", "tpmsniff.command", "tpmsniff.conn")


def tshark(*args: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(
        [require("tshark"), "-X", f"lua_script:{LUA}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def lua_rows(pcap: str, *filters: str) -> dict[int, dict[str, str]]:
    cols = [a for f in FIELDS for a in ("-e", f)]
    out = tshark("-r", pcap, *filters, "-T", "fields", *cols, "-E", "aggregator=;")
    rows = {}
    for line in out.splitlines():
        values = dict(zip(FIELDS, line.split("\t"), strict=True))
        rows[int(values["frame.number"])] = values
    return rows


def decoded(pcap: str) -> dict[int, dict]:
    """tpmsniff's own reading of the capture (the oracle): TPM-channel messages by frame."""
    p = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", "--output", "jsonl", pcap],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    recs = (json.loads(x) for x in p.stdout.splitlines())
    return {r["frame"]: r for r in recs if r["channel"] == "tpm"}


@pytest.mark.parametrize("pcap", CAPTURES, ids=lambda p: p.stem)
def test_fields_agree_with_tpmsniff_decode(pcap):
    rows = lua_rows(str(pcap))
    want = decoded(str(pcap))
    assert want, "no TPM messages decoded"
    for frame, rec in want.items():
        got = rows[frame]
        assert got["tpmsniff.command"] == rec["command"], frame
        assert int(got["tpmsniff.conn"]) == rec["stream"], frame
        assert got["tpmsniff.verdict"] == rec["param"], frame
        assert got["tpmsniff.proof"] == (rec.get("proof") or ""), frame
        # the comment carries the first 64 bytes of what tpmsniff recovered
        assert got["tpmsniff.recovered"] == (rec.get("recovered_hex") or "")[:128], frame
        handles = [s["handle"] for s in rec.get("sessions", [])]
        assert got["tpmsniff.session"].split(";") == (handles or [""]), frame
        findings = got["tpmsniff.finding"]
        if rec["param"] == "PLAINTEXT":
            assert f"{rec['param_type']} in clear" in findings, frame
        if rec["param"] == "WEAK":
            assert f"{rec['param_type']} derivable" in findings, frame
    # frames that are not TPM messages (control channel, handshakes) get no verdict
    extra = {n for n, r in rows.items() if r["tpmsniff.verdict"] and n not in want}
    assert extra == set()
    lua_errors = tshark("-r", str(pcap), "-Y", '_ws.expert.message contains "Lua Error"')
    assert lua_errors == ""


@pytest.mark.parametrize("verdict", ["PLAINTEXT", "WEAK", "ENCRYPTED", "n/a"])
def test_display_filter_selects_exactly_the_known_verdicts(verdict):
    pcap = str(DATA / "esapi-policy-password.pcapng")
    rows = lua_rows(pcap, "-Y", f'tpmsniff.verdict == "{verdict}"')
    want = {n for n, r in decoded(pcap).items() if r["param"] == verdict}
    assert want  # this capture has all four
    assert set(rows) == want


def test_known_weak_frames_and_recovered_secret():
    """esapi-bound-learned: a bound session whose bind authValue crossed in clear; the
    sealed secret of Unseal is recovered (its text is known from the scenario)."""
    pcap = str(DATA / "esapi-bound-learned.pcapng")
    rows = lua_rows(pcap, "-Y", 'tpmsniff.verdict == "WEAK" && tpmsniff.proof == "hmac"')
    assert [rows[n]["tpmsniff.command"] for n in sorted(rows)] == [
        "Create",
        "Create",
        "Create",
        "Load",
        "Load",
        "Unseal",
    ]
    unseal = next(r for r in rows.values() if r["tpmsniff.command"] == "Unseal")
    assert bytes.fromhex(unseal["tpmsniff.recovered"]).startswith(b"scenario-secret-")
    assert set(lua_rows(pcap, "-Y", "tpmsniff.session == 0x02000000")) >= set(rows)


def test_password_in_clear_is_a_finding():
    pcap = str(DATA / "all-commands.pcapng")
    rows = lua_rows(pcap, "-Y", 'tpmsniff.finding == "authValue in clear"')
    assert rows
    assert set(rows) == set(lua_rows(pcap, "-Y", 'frame.comment contains "IN CLEAR"'))
    for r in rows.values():
        assert "0x40000009" in r["tpmsniff.session"].split(";")


def test_colouring_rules(tmp_path):
    """The shipped colorfilters, as a profile's rules, colour PLAINTEXT red and WEAK orange
    (tshark --color puts the colours into PSML) and leave other frames alone."""
    profile = tmp_path / "home" / ".config" / "wireshark" / "profiles" / "tpmsniff"
    profile.mkdir(parents=True)
    (profile / "colorfilters").write_text(COLORFILTERS.read_text())
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CONFIG_HOME="")
    env.pop("XDG_CONFIG_HOME")
    pcap = str(DATA / "esapi-bound-learned.pcapng")
    frames = {n: r["tpmsniff.verdict"] for n, r in lua_rows(pcap).items()}
    out = tshark("-C", "tpmsniff", "--color", "-T", "psml", "-r", pcap, env=env)
    packets = [line for line in out.splitlines() if line.startswith("<packet")]
    assert len(packets) == len(frames)
    colours = {"PLAINTEXT": "background='#cc0000'", "WEAK": "background='#ffa500'"}
    for n, line in zip(sorted(frames), packets, strict=True):
        want = colours.get(frames[n])
        if want is not None:
            assert want in line, (n, line)
        else:
            assert line == "<packet>", (n, line)
