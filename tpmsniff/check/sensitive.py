"""`--sensitive`: the zero-configuration policy (docs/verdicts.md)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Frame
from .findings import Finding


@dataclass(frozen=True, slots=True)
class SensitivePolicy:
    nv: bool = False  # NV_Write data / NV_Read data are sensitive too
    random: bool = False  # GetRandom output is sensitive too

    def findings(self, f: Frame) -> list[Finding]:
        return []
