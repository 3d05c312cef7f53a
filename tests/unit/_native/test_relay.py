"""The native relay's framing decisions equal the Python framers', whatever the bytes
(hypothesis): tn_next_request vs RequestFramer, tn_next_response vs ResponseFramer."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tpmsniff._native import load
from tpmsniff.codec.framing import RequestFramer, ResponseFramer
from tpmsniff.model import Framing

NATIVE = load()
ffi, lib = NATIVE.ffi, NATIVE.lib
KINDS = {lib.TN_RAW: Framing.RAW, lib.TN_MSSIM: Framing.MSSIM, lib.TN_UNFRAMED: Framing.UNFRAMED}
TAGS = [0x8001, 0x8002, 0x00C1, 0x00C4, 0x00C6, 0x00C7, 0x0000, 0x8003, 0x1234]

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")


def header(tag: int, size: int, rest: bytes) -> bytes:
    return tag.to_bytes(2, "big") + size.to_bytes(4, "big") + rest


sizes = st.one_of(
    st.integers(0, 40), st.integers(0, 2**32 - 1), st.sampled_from([9, 10, 4096, 4097])
)
tpm_like = st.builds(header, st.sampled_from(TAGS), sizes, st.binary(max_size=48))
mssim_like = st.builds(
    lambda cmd, loc, size, first: (
        first.to_bytes(4, "big") + bytes([loc]) + size.to_bytes(4, "big") + cmd
    ),
    st.one_of(tpm_like, st.binary(max_size=30)),
    st.integers(0, 255),
    sizes,
    st.sampled_from([8, 8, 8, 0, 7, 0x10]),
)
mssim_rsp = st.builds(
    lambda size, body: size.to_bytes(4, "big") + body,
    sizes,
    st.one_of(tpm_like, st.binary(max_size=40)),
)
buffers = st.one_of(tpm_like, mssim_like, st.binary(max_size=64))
maxes = st.sampled_from([4096, 10, 12, 16, 20, 64])


def native_request(data: bytes, max_message: int) -> tuple[int, Framing | None, int | None, str]:
    kind, loc = ffi.new("int *"), ffi.new("int *")
    note = ffi.new("char[]", 64)
    n = lib.tn_next_request(data, len(data), max_message, kind, loc, note, 64)
    if n == 0:
        return 0, None, None, ""
    return n, KINDS[kind[0]], (None if loc[0] < 0 else loc[0]), ffi.string(note).decode()


def python_request(data: bytes, max_message: int) -> tuple[int, Framing | None, int | None, str]:
    f = RequestFramer(max_message)
    f._buf = bytearray(data)
    m = f._next()
    if m is None:
        return 0, None, None, ""
    return len(m.raw), m.framing, m.locality, m.note or ""


@settings(max_examples=1500, deadline=None)
@given(buffers, maxes)
@example(GETRANDOM, 4096)
@example(GETRANDOM[:5], 4096)
@example(b"\0\0\0\x08\x03\0\0\0\x0c" + GETRANDOM, 4096)
@example(b"\0\0\0", 4096)
def test_request_framing_matches_python(data, max_message):
    assert native_request(data, max_message) == python_request(data, max_message)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(tpm_like, mssim_rsp, st.binary(max_size=64)), maxes, st.booleans())
def test_response_framing_matches_python(data, max_message, mssim):
    kind = ffi.new("int *")
    note = ffi.new("char[]", 64)
    expect = lib.TN_MSSIM if mssim else lib.TN_RAW
    n = lib.tn_next_response(data, len(data), max_message, expect, kind, note, 64)
    f = ResponseFramer(max_message)
    f.expect(Framing.MSSIM if mssim else Framing.RAW)
    f._buf = bytearray(data)
    m = f._next()
    if m is None:
        assert n == 0
    else:
        assert (n, KINDS[kind[0]], ffi.string(note).decode()) == (
            len(m.raw),
            m.framing,
            m.note or "",
        )
