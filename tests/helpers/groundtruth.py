"""What a capture is compared with: swtpm's own log dumps and tshark's decoding of the
capture."""

from __future__ import annotations

import subprocess

from conftest import require

from tpmsniff.inputs.swtpmlog import parse_file


def log_sequence(path, tpm: bool = True) -> list[tuple[bool, bytes]]:
    kinds = ("tpm-cmd", "tpm-rsp") if tpm else ("ctrl-cmd", "ctrl-rsp")
    return [(m.kind == kinds[0], m.data) for m in parse_file(str(path)) if m.kind in kinds]


def tshark_fields(
    pcap, *fields: str, filt: str | None = None, tpm_port: int | None = None
) -> list[list[str]]:
    args = [require("tshark"), "-r", str(pcap), "-T", "fields", "-E", "separator=\t"]
    if tpm_port is not None:  # "Decode As" TPM for a port outside 2321-2322
        args += ["-d", f"tcp.port=={tpm_port},tpm"]
    if filt:
        args += ["-Y", filt]
    for f in fields:
        args += ["-e", f]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [line.split("\t") for line in p.stdout.splitlines()]
