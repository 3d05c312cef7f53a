"""Field decoding on bytes recorded from a real run (tests/data/all-commands.pcapng: the
tests/helpers/workload_all.py ESAPI workload through tpmsniff against swtpm, every command swtpm
implements): exactness, code names, field types and offsets, mutated messages."""

from __future__ import annotations

from functools import cache

from helpers.all_commands import frames
from helpers.fieldcheck import check_frames, problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpmsniff.codec.tpm import cc_name, decode_command, decode_response
from tpmsniff.model import Direction, Frame, Kind


def test_recorded_capture_is_exact_and_complete():
    counts = check_frames(frames())
    assert counts == {"messages": 318, "errors": 0, "header_only": 0}
    issued = {f.name for f in frames() if f.tpm and f.direction is Direction.COMMAND}
    assert len(issued) >= 111  # the 110 swtpm implements, and Vendor_TCG_Test
    assert {"ClockRateAdjust", "ECC_Parameters", "EC_Ephemeral"} <= issued
    assert "NV_UndefineSpaceSpecial" in issued and "FIRST" not in issued


def test_names_of_codes():
    assert cc_name(0x11F) == "NV_UndefineSpaceSpecial"
    assert cc_name(0x155) == "HMAC" and cc_name(0x15B) == "HMAC_Start"
    assert cc_name(0x20000000) == "Vendor_TCG_Test"
    assert cc_name(0x20000123) == "Vendor_0x20000123"
    tpm12 = bytes.fromhex("00c1000000120000006500000005000000040000")[:18]
    info, err = decode_command(tpm12)
    assert info.header_only and info.name == "TPM1.2 GetCapability" and err is None
    assert problems(Frame(1, 1, "tpm", Direction.COMMAND, 0.0, tpm12, "raw", tpm=info)) == []


def test_every_field_names_its_type_and_fits_the_message():
    for f in frames():
        if f.tpm is None or f.tpm.fields is None:
            continue
        stack = list(f.tpm.fields.in_order())
        while stack:
            x = stack.pop()
            assert x.name and x.type and 0 <= x.offset <= x.offset + x.size <= f.tpm.size
            if x.kind in (Kind.INT, Kind.BITS):
                assert isinstance(x.value, int)
            stack.extend(x.children)


@cache
def samples() -> tuple[tuple[bytes, bytes], ...]:
    """(command, response) message pairs of the recording."""
    out = []
    last: bytes | None = None
    for f in frames():
        if f.tpm is None:
            continue
        if f.direction is Direction.COMMAND:
            last = f.message
        elif last is not None:
            out.append((last, f.message))
            last = None
    return tuple(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_never_crash_and_stay_exact(data):
    """Flip, cut or extend recorded messages: decoding never raises, and whatever it
    decodes without error is exact (every byte explained, values equal their bytes)."""
    cmd, rsp = data.draw(st.sampled_from(samples()))
    which = data.draw(st.booleans())
    msg = bytearray(cmd if which else rsp)
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 4))
    if cut == 1:
        msg = msg[: data.draw(st.integers(0, len(msg)))]
    elif cut == 2:
        msg += data.draw(st.binary(max_size=8))
    raw = bytes(msg)
    if which:
        info, err = decode_command(raw)
        d = Direction.COMMAND
    else:
        info, err = decode_response(raw, decode_command(cmd)[0])
        d = Direction.RESPONSE
    fr = Frame(1, 1, "tpm", d, 0.0, raw, "raw", tpm=info, error=err)
    if err is None and not info.header_only and info.size == len(raw):
        assert problems(fr) == []
