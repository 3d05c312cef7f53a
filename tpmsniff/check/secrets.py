"""Secrets that must never cross the TPM bus readable, and the encodings searched for.

A secret is never its own label: everything tpmsniff prints, logs or writes names it
`secret #N (sha256:xxxxxx…)` (docs/ci.md). The value stays in memory only.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Secret:
    value: bytes = field(repr=False)
    number: int = 1

    @property
    def fingerprint(self) -> str:
        """The first 6 hex digits of SHA-256(value): enough to tell secrets apart."""
        return hashlib.sha256(self.value).hexdigest()[:6]

    @property
    def label(self) -> str:
        return f"secret #{self.number} (sha256:{self.fingerprint}…)"

    def __repr__(self) -> str:
        return f"Secret({self.label})"

    def encodings(self) -> list[tuple[str, bytes]]:
        v = self.value
        return [
            ("raw", v),
            ("hex", v.hex().encode()),
            ("HEX", v.hex().upper().encode()),
            ("base64", base64.b64encode(v)),
        ]
