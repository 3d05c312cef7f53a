"""Where loaded keys came from, to say what a salt key is ("primary key in owner
hierarchy", "loaded key under ..."), followed through ContextSave/ContextLoad: a
resource manager (the Linux kernel's /dev/tpmrm0) saves, flushes and reloads every
object around each command, and the reloaded object gets a new handle; the saved
context blob is what stays the same."""

from __future__ import annotations

import hashlib

MAX_CONTEXTS = 1024  # saved contexts remembered (oldest forgotten first)
CONTEXT_LOADED = "context-loaded"


class ObjectBook:
    """Provenance of the objects loaded in a TPM, by handle."""

    def __init__(self) -> None:
        self.by_handle: dict[int, str] = {}
        self._contexts: dict[bytes, str] = {}  # digest of a saved context blob -> origin

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

    def saved(self, handle: int, blob: bytes) -> None:
        """ContextSave of `handle` returned `blob`."""
        if handle not in self.by_handle or not blob:
            return
        self._contexts[hashlib.sha256(blob).digest()] = self.by_handle[handle]
        while len(self._contexts) > MAX_CONTEXTS:
            del self._contexts[next(iter(self._contexts))]

    def context_loaded(self, handle: int, blob: bytes) -> None:
        """ContextLoad of `blob` gave `handle`: the origin of the saved object, if seen."""
        origin = self._contexts.get(hashlib.sha256(blob).digest()) if blob else None
        if origin is None:
            self.by_handle[handle] = f"{CONTEXT_LOADED} key (origin unseen)"
        elif origin.endswith(f", {CONTEXT_LOADED}"):
            self.by_handle[handle] = origin
        else:
            self.by_handle[handle] = f"{origin}, {CONTEXT_LOADED}"
