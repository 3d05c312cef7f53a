"""`tpmsniff check` on recorded captures: secrets never reach its outputs, reports are
private and refuse symlinks, --sensitive names the fields, and input it cannot read
whole fails closed (exit 2) unless --allow-partial."""

from __future__ import annotations

import json
import os
import random
import stat
import struct
from pathlib import Path

import pytest
from helpers.recorded import DATA, cap, check, every_encoding
from helpers.scenarios import PRIMARY_AUTH, SECRET

from tpmsniff.check.secrets import Secret


def test_check_outputs_never_contain_the_secret(tmp_path):
    rj, rx = tmp_path / "r.json", tmp_path / "r.xml"
    rc, out, err = check(cap("password"), "--secret", SECRET.decode(), "--json", rj, "--junit", rx)
    assert rc == 1
    label = Secret(SECRET).label
    assert label in out
    report = json.loads(rj.read_text())
    assert report["secrets"] == [label] and report["result"] == "fail"
    for blob in (out.encode(), err.encode(), rj.read_bytes(), rx.read_bytes()):
        for enc in every_encoding(SECRET):
            assert enc not in blob
    for p in (rj, rx):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_reports_refuse_symlinks(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    rc, _, err = check(cap("salted"), "--secret", SECRET.decode(), "--json", link)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "symbolic link" in err
    assert target.read_text() == "keep"


# -- --sensitive -----------------------------------------------------------------------
def test_sensitive_names_the_fields():
    rc, out, _ = check(cap("password"), "--sensitive")
    assert rc == 1
    assert "Create inSensitive.data readable by an observer (in clear)" in out
    assert "Unseal outData readable by an observer (in clear)" in out
    rc, out, _ = check(cap("bound-learned"), "--sensitive")
    assert rc == 1 and "CreatePrimary inSensitive.userAuth" in out
    assert "Unseal outData readable by an observer (decrypted (proof=hmac))" in out
    rc, out, _ = check(cap("policy-password"), "--sensitive")
    assert rc == 1 and "PolicyPassword authValue" in out
    assert check(cap("salted"), "--sensitive")[0] == 0
    for enc in every_encoding(SECRET) + every_encoding(PRIMARY_AUTH):
        assert enc.decode() not in out


# -- fail closed -----------------------------------------------------------------------
def test_truncated_capture_exits_2_naming_file_and_offset(tmp_path):
    data = Path(cap("password")).read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) - 100])
    rc, _, err = check(cut, "--secret", "absent-secret-7")
    assert rc == 2 and str(cut) in err and "at byte" in err
    assert len(err.strip().splitlines()) == 1
    rc, out, err = check(cut, "--secret", "absent-secret-7", "--allow-partial")
    assert rc == 0 and "PARTIAL:" in out


def test_swtpm_log_with_a_message_logged_in_part_is_partial(tmp_path):
    lines = (DATA / "tpm2tools-workload.swtpm.log").read_text().splitlines(keepends=True)
    heads = [
        i
        for i, line in enumerate(lines)
        if "SWTPM_IO_Write" in line and int(line.rsplit(" ", 1)[1]) > 32
    ]
    i = heads[len(heads) // 2]
    cut = tmp_path / "cut.log"
    cut.write_text("".join(lines[: i + 2]))  # the header and one line of its dump
    rc, _, err = check(cut, "--secret", "absent-secret-7")
    assert rc == 2 and "logged only in part" in err and str(cut) in err
    assert check(cut, "--secret", "absent-secret-7", "--allow-partial")[0] == 0


def test_secret_outside_any_decoded_message_is_found(tmp_path):
    data = bytearray(Path(cap("salted")).read_bytes())
    # hide the secret's hex in an unknown pcapng block appended at the end
    body = SECRET.hex().encode()
    body += b"\0" * (-len(body) % 4)
    blen = 12 + len(body)
    data += struct.pack("<II", 0x0BADBEEF, blen) + body + struct.pack("<I", blen)
    p = tmp_path / "hidden.pcapng"
    p.write_bytes(bytes(data))
    rc, out, _ = check(p, "--secret", SECRET.decode())
    assert rc == 1 and "(hex-encoded) found in the raw file at offset" in out
    assert "outside any decoded message" in out


def test_a_missing_tcp_segment_is_partial_input(tmp_path):
    data = Path(cap("password")).read_bytes()
    offs = _blocks(data)
    holder = [o for o in offs if SECRET in data[o : o + struct.unpack_from("<I", data, o + 4)[0]]]
    o = holder[-1]  # the Unseal response's segment
    end = o + struct.unpack_from("<I", data, o + 4)[0]
    p = tmp_path / "gap.pcapng"
    p.write_bytes(data[:o] + data[end:])
    rc, _, err = check(p, "--secret", "absent-secret-7")
    assert rc == 2 and "gap" in err and str(p) in err


def _blocks(data: bytes) -> list[int]:
    offs, off = [], 0
    while off + 8 <= len(data):
        offs.append(off)
        off += struct.unpack_from("<I", data, off + 4)[0]
    return offs


@pytest.mark.parametrize(("kind", "count"), [("password", 1000), ("bound", 400)])
def test_mutants_of_a_leaking_capture_never_pass(tmp_path, kind, count):
    """Seeded mutants (bit flips, truncations, damaged block lengths) of a capture that
    leaks SECRET in clear (password: 1,000) and of one that leaks it through a derivable
    session (bound, WEAK: 400): `check --secret` never exits 0, except on a mutant cut
    exactly at a block boundary before the leak (a valid, shorter capture that holds no
    secret)."""
    data = Path(cap(kind)).read_bytes()
    blocks = _blocks(data)
    rng = random.Random(9)
    path = tmp_path / "m.pcapng"
    clean = 0
    for i in range(count):
        m = bytearray(data)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                bit = rng.randrange(len(m) * 8)
                m[bit // 8] ^= 1 << (bit % 8)
        elif kind == 1:
            m = m[: rng.randrange(len(m))]
        else:
            b = rng.choice(blocks)
            old = struct.unpack_from("<I", m, b + 4)[0]
            new = rng.choice([old + 4, old - 4, old ^ (1 << rng.randrange(32)), 0, 12])
            struct.pack_into("<I", m, b + 4, new & 0xFFFFFFFF)
        path.write_bytes(bytes(m))
        rc, _, err = check(path, "--secret", SECRET.decode())
        assert "Traceback" not in err
        if rc == 0:
            assert kind == 1 and len(m) in blocks, f"mutant {i} passed"
            assert not any(e in m for e in every_encoding(SECRET))
            clean += 1
        else:
            assert rc in (1, 2)
    assert clean < 20


def test_reports_are_private_even_with_a_loose_umask(tmp_path):
    old = os.umask(0)
    try:
        check(cap("salted"), "--secret", SECRET.decode(), "--junit", tmp_path / "j.xml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "j.xml").stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", ["password", "bound", "bound-learned", "policy-password"])
def test_leaking_captures_fail_and_salted_passes(kind):
    assert check(cap(kind), "--secret", SECRET.decode())[0] == 1
    assert check(cap("salted"), "--secret", SECRET.decode())[0] == 0
