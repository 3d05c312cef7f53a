"""inputs/bus/i2c.py: I2C TPM transfers (TPM_LOC_SEL, register pointer) from sigrok's
i2c annotations and Logic 2's I2C table."""

from __future__ import annotations

from pathlib import Path

from helpers.bus_sim import Op, i2c_annotations
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tis import Access, BusWarning
from tpmsniff.inputs.bus import i2c

OPS = [
    Op(True, 2, 0x24, b"\x80\x01"),
    Op(False, 2, 0x18, b"\x90\x00\x00\x00"),
    Op(False, 0, 0x24, b"\x01"),
]


def test_annotations_with_locality_and_pointer() -> None:
    got = list(i2c.i2c_annotations(i2c_annotations(OPS).splitlines()))
    accs = [a for a in got if isinstance(a, Access)]
    assert [(a.write, a.locality, a.reg, a.data) for a in accs] == [
        (True, 2, 0x00, b"\x02"),
        (True, 2, 0x24, b"\x80\x01"),
        (False, 2, 0x18, b"\x90\x00\x00\x00"),
        (True, 0, 0x00, b"\x00"),
        (False, 0, 0x24, b"\x01"),
    ]


def test_read_without_pointer_is_a_warning() -> None:
    got = list(i2c.i2c_annotations(["i2c-1: Address read: 2E", "i2c-1: Data read: 01"]))
    assert isinstance(got[0], BusWarning)


def test_saleae_i2c(tmp_path: Path) -> None:
    p = tmp_path / "i2c.csv"
    p.write_text(
        'name,type,start_time,duration,"ack","address","read","data"\n'
        "I2C,start,0.1,0,,,,\nI2C,address,0.1,0,true,0x2E,false,\nI2C,data,0.2,0,true,,,0x24\n"
        "I2C,data,0.3,0,true,,,0x80\nI2C,stop,0.4,0,,,,\n"
    )
    got = list(i2c.saleae_i2c(str(p)))
    assert got == [Access(0.1, True, 0, 0x24, b"\x80", "line 3")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "i2c-1: Address read: 2E",
                "i2c-1: Address write: 2E",
                "i2c-1: Data write: 24",
                "i2c-1: Data read: FF",
                "i2c-1: Stop",
                "junk",
            ]
        ),
        max_size=40,
    )
)
def test_any_sequence_never_crashes(lines: list[str]) -> None:
    for a in i2c.i2c_annotations(lines):
        assert isinstance(a, Access | BusWarning)
