"""Byte-level grading (codec/sessions/plaintext.py, grading.py; docs/verdicts.md
"Byte-level grading"): which bytes parse exactly as a structured parameter type, and
how often random ciphertext does (the false-alarm rates docs/verdicts.md states)."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from tpm2_pytss.constants import TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from tpmsniff.codec.sessions import SessionTracker
from tpmsniff.codec.sessions.plaintext import Shape, is_structured, shape
from tpmsniff.codec.tpm import decode_command, decode_response
from tpmsniff.model import Verdict

# (max size of the first TPM2B, of the second): structures of exactly two TPM2Bs
TWO_SIZES = {"TPM2B_SENSITIVE_CREATE": (64, 256), "TPM2B_ECC_POINT": (128, 128)}


def two_sizes_exact(type_name: str, b: bytes) -> bool:
    """The documented condition: both sizes within their maxima, and they tile `b`."""
    first, second = TWO_SIZES[type_name]
    if len(b) < 4:
        return False
    u = int.from_bytes(b[0:2], "big")
    if u > first or 4 + u > len(b):
        return False
    d = int.from_bytes(b[2 + u : 4 + u], "big")
    return d <= second and 4 + u + d == len(b)


def two_sizes_count(type_name: str, n: int) -> int:
    """How many of the 2^32 values of the two size fields parse, for n bytes: the
    false-alarm probability of random ciphertext is this / 2^32 (docs/verdicts.md)."""
    first, second = TWO_SIZES[type_name]
    if n < 4:
        return 0
    return max(0, min(first, n - 4) - max(0, n - 4 - second) + 1)


def nv_public_exact(b: bytes) -> bool:
    """TPMS_NV_PUBLIC: nvIndex, nameAlg, attributes (10 bytes), authPolicy (<= 64), dataSize."""
    if len(b) < 14:
        return False
    a = int.from_bytes(b[10:12], "big")
    return a <= 64 and len(b) == 14 + a


def test_structured_types():
    for t in (
        "TPM2B_SENSITIVE_CREATE",
        "TPM2B_SENSITIVE",
        "TPM2B_ECC_POINT",
        "TPM2B_NV_PUBLIC",
        "TPM2B_PUBLIC",
        "TPM2B_ATTEST",
    ):
        assert is_structured(t), t
    for t in ("TPM2B_AUTH", "TPM2B_SENSITIVE_DATA", "TPM2B_PRIVATE", "TPM2B_ID_OBJECT", "NOPE"):
        assert not is_structured(t) and shape(t, os.urandom(9)) is Shape.UNSTRUCTURED


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TWO_SIZES)), st.binary(max_size=400))
def test_two_size_structures_parse_exactly_when_documented(type_name, b):
    assert (shape(type_name, b) is Shape.PARSED) == two_sizes_exact(type_name, b)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TWO_SIZES)), st.integers(0, 200), st.integers(0, 300))
def test_two_size_structures_built_to_parse(type_name, u, d):
    """Values built with consistent sizes hit the other branch of the property."""
    b = struct.pack(">H", u) + os.urandom(u) + struct.pack(">H", d) + os.urandom(d)
    assert (shape(type_name, b) is Shape.PARSED) == two_sizes_exact(type_name, b)
    assert shape(type_name, b + b"\0") is Shape.MALFORMED  # a byte left over


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_nv_public_parses_exactly_when_documented(b):
    assert (shape("TPM2B_NV_PUBLIC", b) is Shape.PARSED) == nv_public_exact(b)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_other_structures_need_their_selector(b):
    """TPMT_SENSITIVE and TPMT_PUBLIC begin with an object type (4 of 65,536 values),
    TPMS_ATTEST with TPM_GENERATED_VALUE: random bytes almost never parse."""
    if shape("TPM2B_SENSITIVE", b) is Shape.PARSED or shape("TPM2B_PUBLIC", b) is Shape.PARSED:
        assert b[:2] in (b"\0\x01", b"\0\x08", b"\0\x23", b"\0\x25")
    if shape("TPM2B_ATTEST", b) is Shape.PARSED:
        assert b[:4] == b"\xff\x54\x43\x47"


def test_documented_counts_are_what_pytss_accepts():
    """Every value of the first size field, the second set to fit: the number that
    parse is the documented count (so the rate is count / 2^32)."""
    for type_name in TWO_SIZES:
        for n in (4, 40, 68, 132, 260, 300, 400):
            got = 0
            for u in range(0, min(n - 4, 200) + 1):
                b = bytearray(os.urandom(n))
                b[0:2] = struct.pack(">H", u)
                b[2 + u : 4 + u] = struct.pack(">H", n - 4 - u)
                got += shape(type_name, bytes(b)) is Shape.PARSED
            assert got == two_sizes_count(type_name, n), (type_name, n)
    assert two_sizes_count("TPM2B_SENSITIVE_CREATE", 100) == 65  # 65 / 2^32 = 1.5e-8


# -- grading: a salted session, then a Create or LoadExternal with random ciphertext --
SALTED_START = (
    struct.pack(">II", 0x80000000, 0x40000007)
    + struct.pack(">H", 16)
    + bytes(16)
    + struct.pack(">H", 256)
    + bytes(range(256))
    + b"\0"
    + bytes.fromhex("000600800043")  # AES-128-CFB
    + struct.pack(">H", 0x000B)
)


def _cmd(tag: int, cc: int, body: bytes) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), cc) + body


def _tracker_with_salted_session() -> SessionTracker:
    tr = SessionTracker()
    cmd = _cmd(0x8001, 0x176, SALTED_START)
    info, err = decode_command(cmd)
    assert err is None
    tr.on_command(1, info, cmd)
    rsp = _cmd(0x8001, 0, struct.pack(">I", 0x02000000) + struct.pack(">H", 16) + bytes(16))
    rinfo, err = decode_response(rsp, info)
    assert err is None
    tr.on_response(1, rinfo, rsp)
    return tr


PUBLIC = bytes(TPM2B_PUBLIC.parse("keyedhash", objectAttributes=TPMA_OBJECT.USERWITHAUTH).marshal())


def _graded(cc: int, first: bytes, handles: bytes, rest: bytes):
    tr = _tracker_with_salted_session()
    auth = struct.pack(">IH16sBH", 0x02000000, 16, bytes(16), 0x21, 32) + bytes(32)
    body = handles + struct.pack(">I", len(auth)) + auth + struct.pack(">H", len(first))
    msg = _cmd(0x8002, cc, body + first + rest)
    info, err = decode_command(msg)
    assert err is None, err
    return tr.on_command(1, info, msg).param


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=330))
def test_random_ciphertext_of_in_sensitive_is_encrypted(ct):
    p = _graded(0x153, ct, struct.pack(">I", 0x80000000), PUBLIC + b"\0\0" + b"\0\0\0\0")
    want = Verdict.PLAINTEXT if two_sizes_exact("TPM2B_SENSITIVE_CREATE", ct) else Verdict.ENCRYPTED
    assert p.verdict is want, p.word
    assert "salted by" in p.strength


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_random_ciphertext_of_in_private_is_encrypted(ct):
    """LoadExternal inPrivate (TPM2B_SENSITIVE): authorises no handle, a salted session
    in slot 1 encrypts it."""
    p = _graded(0x167, ct, b"", PUBLIC + struct.pack(">I", 0x40000007))
    if shape("TPM2B_SENSITIVE", ct) is not Shape.PARSED:
        assert p.verdict is Verdict.ENCRYPTED, p.word


def test_plain_in_sensitive_under_a_salted_session_is_plaintext():
    sens = struct.pack(">H", 4) + b"pass" + struct.pack(">H", 6) + b"secret"
    p = _graded(0x153, sens, struct.pack(">I", 0x80000000), PUBLIC + b"\0\0" + b"\0\0\0\0")
    assert p.verdict is Verdict.PLAINTEXT and p.plaintext == "parsed", p.word
    assert p.word.startswith("PLAINTEXT(sent in clear despite the decrypt attribute (AES-128")
