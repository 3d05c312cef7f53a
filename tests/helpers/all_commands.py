"""The capture of every command swtpm implements (tests/data/all-commands.pcapng, made
with helpers/workload_all.py through tpmsniff), decoded once, and lookups into it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction, Frame

CAPTURE = Path(__file__).resolve().parents[1] / "data" / "all-commands.pcapng"


@cache
def frames() -> tuple[Frame, ...]:
    return tuple(frames_from_input(str(CAPTURE)))


def first(name: str, direction: Direction = Direction.COMMAND, ok: bool = True) -> Frame:
    return next(
        f
        for f in frames()
        if f.name == name
        and f.direction is direction
        and (not ok or direction is Direction.COMMAND or f.tpm.code == 0)
    )
