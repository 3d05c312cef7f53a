"""Does a parameter's buffer parse exactly as its type? The evidence a verdict takes from
the bytes themselves rather than from a session's decrypt/encrypt flag (docs/verdicts.md
"Byte-level grading").

Only a structured type can tell: a TPM2B that wraps a structure (TPM2B_SENSITIVE_CREATE
wraps TPMS_SENSITIVE_CREATE: userAuth and data, each with its own size) parses exactly
when every inner size is consumed and the structure ends at the buffer's end. A byte
string (TPM2B_AUTH, TPM2B_SENSITIVE_DATA, ...) parses whatever its bytes, so it proves
nothing either way. Parsing is tpm2-pytss's unmarshalling, never our own.
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from typing import Any

from tpm2_pytss import types as pytypes
from tpm2_pytss.types import ffi

# TPM2Bs whose buffer is declared as bytes but holds a structure (Part 2)
_BYTES_HOLDING = {"TPM2B_ATTEST": "TPMS_ATTEST"}


class Shape(Enum):
    UNSTRUCTURED = "unstructured"  # a byte string: any bytes parse
    PARSED = "parsed"  # a structure, consumed exactly
    MALFORMED = "malformed"  # a structure that does not parse, or leaves bytes over


@cache
def inner_type(type_name: str) -> Any | None:
    """The pytss class of the structure a TPM2B holds (None: a byte string)."""
    try:
        ct = ffi.typeof(type_name)
    except Exception:
        return None
    if type_name in _BYTES_HOLDING:
        return getattr(pytypes, _BYTES_HOLDING[type_name], None)
    if len(ct.fields) != 2 or ct.fields[1][1].type.kind != "struct":
        return None
    return getattr(pytypes, ct.fields[1][1].type.cname.removeprefix("struct "), None)


def is_structured(type_name: str | None) -> bool:
    return type_name is not None and inner_type(type_name) is not None


def shape(type_name: str | None, buf: bytes) -> Shape:
    """How `buf` (a TPM2B's buffer, without its size) reads as the structure of
    `type_name`."""
    cls = inner_type(type_name) if type_name is not None else None
    if cls is None:
        return Shape.UNSTRUCTURED
    try:
        _, used = cls.unmarshal(buf)
    except Exception:  # pytss raises TSS2_Exception (mu: ...) on any bad size or selector
        return Shape.MALFORMED
    return Shape.PARSED if used == len(buf) else Shape.MALFORMED
