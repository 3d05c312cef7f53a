"""inputs/bus/lpc.py: lpc_sniffer_tpm lines (read_serial.py and parse.py output)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tis import Access, BusWarning
from tpmsniff.inputs.bus.lpc import looks_like_lpc, lpc_accesses


def test_both_line_forms() -> None:
    lines = ["b'000000248002'", " io:  read 00003024:   2c", "noise", "b'000000240012'"]
    got = list(lpc_accesses(lines))
    assert got[0] == Access(0.0, True, 0, 0x24, b"\x80", "line 1")
    assert got[1] == Access(0.0, False, 3, 0x24, b"\x2c", "line 2")
    assert isinstance(got[2], BusWarning) and "sync" in got[2].text
    assert looks_like_lpc(lines[:2]) and not looks_like_lpc(["hello", "world"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=20))
def test_garbage_never_crashes(lines: list[str]) -> None:
    for a in lpc_accesses(lines):
        assert isinstance(a, Access | BusWarning)
