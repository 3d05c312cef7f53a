"""Secrets that must never cross the TPM bus readable, and the encodings searched for."""

from __future__ import annotations

import base64
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Secret:
    label: str
    value: bytes

    def encodings(self) -> list[tuple[str, bytes]]:
        v = self.value
        return [
            ("raw", v),
            ("hex", v.hex().encode()),
            ("HEX", v.hex().upper().encode()),
            ("base64", base64.b64encode(v)),
        ]
