"""inputs/bus/exports.py: Saleae TPM SPI Transaction HLA, sigrok/PulseView spi_tpm and
DSView exports -> register accesses."""

from __future__ import annotations

from pathlib import Path

from helpers.bus_sim import Op, dsview_csv, saleae_hla_csv, sigrok_annotations
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tis import Access, BusWarning
from tpmsniff.inputs.bus import exports

OPS = [
    Op(True, 0, 0x18, b"\x40", 2),
    Op(False, 3, 0x24, b"\x80\x01\x00\x00", 0),
    Op(False, 0, 0x80, b"\x00" * 64, 1),
]


def want(ts: bool = True) -> list[tuple[bool, int, int, bytes]]:
    return [(o.write, o.locality, o.reg, o.data) for o in OPS]


def got(items: list[Access | BusWarning]) -> list[tuple[bool, int, int, bytes]]:
    assert all(isinstance(a, Access) for a in items), items
    return [(a.write, a.locality, a.reg, a.data) for a in items if isinstance(a, Access)]


def test_saleae_hla(tmp_path: Path) -> None:
    p = tmp_path / "hla.csv"
    p.write_text(saleae_hla_csv(OPS))
    items = list(exports.saleae_hla(str(p)))
    assert got(items) == want()
    assert isinstance(items[0], Access) and items[0].ts == 0.001


def test_saleae_iso_times() -> None:
    assert exports._seconds("2024-03-01T10:00:00.123456789+00:00") == 1709287200.123456789
    assert exports._seconds("0.5") == 0.5
    assert exports._seconds("soon") is None


def test_sigrok_cli_and_pulseview_annotations(tmp_path: Path) -> None:
    for pv in (False, True):
        lines = sigrok_annotations(OPS, pulseview=pv).splitlines()
        assert got(list(exports.spi_tpm_annotations(lines))) == want()


def test_dsview(tmp_path: Path) -> None:
    p = tmp_path / "ds.csv"
    p.write_text(dsview_csv(OPS))
    items = list(exports.dsview_csv(str(p)))
    assert got(items) == want() and items[0].ts == 0.001


def test_stray_annotations_are_warnings() -> None:
    lines = [
        "spi_tpm-1: Read",
        "spi_tpm-1: Read",
        "spi_tpm-1: Register: TPM_STS_0",
        "spi_tpm-1: 00",
        "spi_tpm-1: ff",
        "spi_tpm-1: Write",
    ]
    items = list(exports.spi_tpm_annotations(lines))
    assert [type(i).__name__ for i in items] == ["BusWarning", "Access", "BusWarning", "BusWarning"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=30), st.integers(0, 3))
def test_garbage_lines_between_transactions(junk: list[str], at: int) -> None:
    lines = sigrok_annotations(OPS).splitlines()
    clean = [j.replace("\n", " ") for j in junk if "spi_tpm" not in j and "SPI TPM" not in j]
    lines[at * 3 : at * 3] = clean  # between transactions
    assert got(list(exports.spi_tpm_annotations(lines))) == want()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=40).map(lambda s: "spi_tpm-1: " + s), max_size=30))
def test_any_annotation_text_never_crashes(lines: list[str]) -> None:
    for item in exports.spi_tpm_annotations(lines):
        assert isinstance(item, Access | BusWarning)
