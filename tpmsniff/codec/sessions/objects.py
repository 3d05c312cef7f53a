"""Where loaded keys came from, to say what a salt key is ("primary key in owner
hierarchy", "loaded key under ...")."""

from __future__ import annotations


class ObjectBook:
    """Provenance of the objects loaded in a TPM, by handle."""

    def __init__(self) -> None:
        self.by_handle: dict[int, str] = {}

    def origin(self, handle: int) -> str:
        if handle in self.by_handle:
            return self.by_handle[handle]
        if 0x81010000 <= handle <= 0x810100FF:
            return f"EK 0x{handle:08x} (persistent)"
        if handle >> 24 == 0x81:
            return f"persistent key 0x{handle:08x}"
        return f"key 0x{handle:08x} (origin unseen)"

    def loaded(self, handle: int, origin: str) -> None:
        self.by_handle[handle] = origin

    def flushed(self, handle: int) -> None:
        self.by_handle.pop(handle, None)
