"""A BitLocker VMK in a clear Unseal response is named as such (issue 20) in the summary
line, the pcapng per-frame comment and the --sensitive finding, and its bytes appear in none
of them."""

from __future__ import annotations

import io
import struct
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from helpers.recorded import check, every_encoding

from tpmsniff.cli.decode import main as decode_main
from tpmsniff.codec.wellknown import well_known
from tpmsniff.inputs.pcapng import read_pcapng

KEY = bytes(range(0xA0, 0xC0))  # the 32-byte AES-256 key that must never be printed
VMK = bytes.fromhex("2c0000000100000003200000") + KEY
PW = struct.pack(">IHBH", 0x40000009, 0, 0x01, 0)  # password session, empty auth


def _msg(tag: int, code: int, body: bytes) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), code) + body


def _hex(data: bytes) -> str:
    return "".join(
        " " + " ".join(f"{b:02X}" for b in data[i : i + 16]) + " \n"
        for i in range(0, len(data), 16)
    )


def vmk_log(tmp_path: Path) -> Path:
    """A swtpm --log of one Unseal whose outData is a VMK (password session, in clear)."""
    cmd = _msg(0x8002, 0x15E, struct.pack(">II", 0x80000001, len(PW)) + PW)
    params = struct.pack(">H", len(VMK)) + VMK
    rsp = _msg(0x8002, 0, struct.pack(">I", len(params)) + params + bytes([0, 0, 1, 0, 0]))
    log = tmp_path / "vmk.swtpm.log"
    log.write_text(
        f" SWTPM_IO_Read: length {len(cmd)}\n{_hex(cmd)}"
        f" SWTPM_IO_Write: length {len(rsp)}\n{_hex(rsp)}"
    )
    return log


def decode(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = decode_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def never_shown(*blobs: bytes) -> None:
    for blob in blobs:
        for enc in every_encoding(KEY) + every_encoding(VMK):
            assert enc not in blob
        assert KEY[:8].hex() not in blob.decode(errors="replace").replace(" ", "").lower()


def test_well_known():
    assert well_known(VMK) == "BitLocker VMK"
    assert well_known(VMK[:11]) is None and well_known(b"") is None and well_known(None) is None


def test_vmk_named_in_summary_and_pcapng_comment(tmp_path):
    pcap = tmp_path / "vmk.pcapng"
    rc, out, err = decode(vmk_log(tmp_path), "--pcap", pcap)
    assert rc == 0, err
    assert "Unseal -> BitLocker VMK 44 bytes" in out
    comments = [p.comment for p in read_pcapng(str(pcap)) if "rsp Unseal" in (p.comment or "")]
    assert comments and "BitLocker VMK" in comments[0]
    # the packet carries the bytes (the capture is the bus); no comment does
    notes = "\n".join(p.comment or "" for p in read_pcapng(str(pcap)))
    never_shown(out.encode(), err.encode(), notes.encode())


def test_vmk_named_in_sensitive_finding(tmp_path):
    rc, out, err = check(vmk_log(tmp_path), "--sensitive")
    assert rc == 1, (out, err)
    line = next(x for x in out.splitlines() if "BitLocker VMK" in x)
    assert "Unseal" in line and "readable by an observer" in line
    never_shown(out.encode(), err.encode())
