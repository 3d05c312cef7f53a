"""inputs/bus/spi.py: SPI TPM transactions (header, address, wait states) and SPI mode 0
from signal levels."""

from __future__ import annotations

import random

from helpers.bus_sim import Op, spi_bytes, spi_levels
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tis import Access, BusWarning
from tpmsniff.inputs.bus.spi import SpiFrame, SpiSampler, frame_access

ops = st.builds(
    Op,
    st.booleans(),
    st.integers(0, 4),
    st.sampled_from([0x00, 0x18, 0x24, 0x80]),
    st.binary(min_size=1, max_size=64),
    st.integers(0, 20),
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 2**32))
def test_any_wait_states_give_the_access(op: Op, seed: int) -> None:
    mosi, miso = spi_bytes(op, random.Random(seed))
    got = frame_access(SpiFrame(1.5, mosi, miso, "x"))
    assert got == Access(1.5, op.write, op.locality, op.reg, op.data, "x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.binary(max_size=80))
def test_any_bytes_are_an_access_or_a_warning(mosi: bytes, miso: bytes) -> None:
    got = frame_access(SpiFrame(0.0, mosi, miso))
    assert isinstance(got, Access | BusWarning)
    if isinstance(got, Access):
        assert len(got.data) == (mosi[0] & 0x3F) + 1


def test_not_the_tpm_and_short_transfers_are_warnings() -> None:
    w = frame_access(SpiFrame(0.0, b"\x80\x12\x00\x18\x00", b"\x00\x00\x00\x01\x00"))
    assert isinstance(w, BusWarning) and "not in the TPM's space" in w.text
    w = frame_access(SpiFrame(0.0, b"\x83\xd4\x00\x18", b"\x00\x00\x00\x01"))
    assert isinstance(w, BusWarning) and "cut short" in w.text


@settings(max_examples=50, deadline=None)
@given(st.lists(ops, min_size=1, max_size=5), st.integers(0, 2**32))
def test_sampler_recovers_every_frame(many: list[Op], seed: int) -> None:
    s = SpiSampler()
    frames = []
    for t, cs, clk, mo, mi in spi_levels(many, seed):
        f = s.feed(t, cs, clk, mo, mi)
        if f is not None:
            frames.append(f)
    assert s.finish() is None
    rnd = random.Random(seed)
    want = []
    for op in many:  # the simulator's own draws: the frame's bytes, then the gap
        want.append(spi_bytes(op, rnd))
        rnd.randint(2, 6)
    assert [(f.mosi, f.miso) for f in frames] == want


def test_sampler_reports_stray_bits_and_a_cut_capture() -> None:
    s = SpiSampler()
    s.feed(0, 0, 0, 0, 0)
    s.feed(1, 0, 1, 1, 0)
    w = s.feed(2, 1, 0, 0, 0)
    assert isinstance(w, BusWarning) and "stray bit" in w.text
    s.feed(3, 0, 0, 0, 0)
    for i in range(8):
        s.feed(4 + i, 0, i % 2, 1, 1)
    assert s.finish() is not None
