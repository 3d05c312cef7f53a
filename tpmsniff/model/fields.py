"""Decoded fields of a TPM 2.0 message: an ordered, immutable tree (see codec/fields.py).

Every field knows where it sits in the TPM message (`offset`, `size`, without transport
prefix), so a viewer can point at its bytes and a test can prove that no byte is left
unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    INT = "int"  # an integer; `text` names it when it is an enumeration constant
    BITS = "bits"  # an attribute bit field; `text` is the `|`-joined flag names
    BYTES = "bytes"  # a byte buffer (TPM2B contents, digest, selection bitmap)
    STRUCT = "struct"  # children are the members, in wire order
    LIST = "list"  # children are the elements (names "[0]", "[1]", ...)


class Field(NamedTuple):
    """One field. Immutable; a NamedTuple rather than a frozen dataclass because the
    worker builds tens of them per message and a tuple is several times cheaper to make."""

    name: str  # as TPM 2.0 Part 3 / Part 2 name it: "inPublic", "publicArea", "type"
    type: str  # e.g. "TPM2B_PUBLIC", "TPMT_PUBLIC", "TPM2_ALG", "UINT16"
    offset: int  # within the TPM message
    size: int  # bytes on the wire (a TPM2B: its 2-byte size field included)
    kind: Kind
    value: int | bytes | None = None  # INT/BITS: the number; BYTES: the buffer
    text: str | None = None  # enumeration constant name or flag names, when known
    children: tuple[Field, ...] = ()
    recovered: bool = False  # decoded from plaintext tpmsniff decrypted (weak session)
    encrypted: bool = False  # ciphertext on the wire: shown as bytes

    def json_value(self) -> object:
        """Integers as numbers, constants as names, bit fields as `|` names, bytes as hex;
        structures as objects, lists as arrays."""
        if self.kind is Kind.STRUCT:
            return {c.name: c.json_value() for c in self.children}
        if self.kind is Kind.LIST:
            return [c.json_value() for c in self.children]
        if self.text is not None:
            return self.text
        if isinstance(self.value, bytes):
            return self.value.hex()
        return self.value


@dataclass(frozen=True, slots=True)
class Fields:
    """The fields of one message, in groups: header, handles, authorization area
    (`sessions`, with its size field) and parameters (with parameterSize on responses)."""

    header: tuple[Field, ...]
    handles: tuple[Field, ...] = ()
    sessions: tuple[Field, ...] = ()
    parameters: tuple[Field, ...] = ()

    def in_order(self) -> tuple[Field, ...]:
        """Every top-level field, in wire order."""
        return tuple(
            sorted(self.header + self.handles + self.sessions + self.parameters, key=_offset)
        )

    def parameter(self, name: str) -> Field | None:
        for f in self.parameters:
            if f.name == name:
                return f
        return None


def _offset(f: Field) -> int:
    return f.offset
