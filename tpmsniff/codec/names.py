"""Names of TPM entities, as an observer of the bus can learn them (TPM 2.0 Part 1 §16).

The Name of a permanent handle, PCR or session is its handle; the Name of an object or
NV index is nameAlg ‖ H(public area). cpHash covers the Names of a command's handles, so
a command HMAC can be checked only when every one is known. They are learned from the
public areas that cross the bus in clear: CreatePrimary/CreateLoaded/Load/LoadExternal/
ReadPublic/NV_ReadPublic/NV_DefineSpace, and carried over EvictControl and ContextSave/
ContextLoad. pytss computes the Name (`get_name`); the NV WRITTEN-bit update is ours.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tpm2_pytss.constants import TPM2_CC

CC_CREATE_PRIMARY = TPM2_CC.CreatePrimary
CC_CREATE_LOADED = TPM2_CC.CreateLoaded
CC_LOAD = TPM2_CC.Load
CC_LOAD_EXTERNAL = TPM2_CC.LoadExternal
CC_READ_PUBLIC = TPM2_CC.ReadPublic
CC_NV_READ_PUBLIC = TPM2_CC.NV_ReadPublic
CC_NV_DEFINE = TPM2_CC.NV_DefineSpace
CC_NV_UNDEFINE = TPM2_CC.NV_UndefineSpace
CC_NV_UNDEFINE_SPECIAL = TPM2_CC.NV_UndefineSpaceSpecial
CC_EVICT = TPM2_CC.EvictControl
CC_CONTEXT_SAVE = TPM2_CC.ContextSave
CC_CONTEXT_LOAD = TPM2_CC.ContextLoad
CC_FLUSH = TPM2_CC.FlushContext
MAX_CONTEXTS = 1024
NV_WRITES = {
    TPM2_CC.NV_Write,
    TPM2_CC.NV_Increment,
    TPM2_CC.NV_Extend,
    TPM2_CC.NV_SetBits,
}  # NV_Write, NV_Increment, NV_Extend, NV_SetBits
NV_WRITTEN = 0x20000000  # TPMA_NV_WRITTEN
NV_WRITELOCKED, NV_READLOCKED = 0x00000800, 0x00040000
CC_NV_WRITELOCK, CC_NV_READLOCK = TPM2_CC.NV_WriteLock, TPM2_CC.NV_ReadLock


def handle_is_own_name(handle: int) -> bool:
    """PCRs, permanent handles and sessions are named by their handle."""
    return handle >> 24 in (0x00, 0x02, 0x03, 0x40)


def _bytes(x: Any) -> bytes:
    try:
        return bytes(x)
    except Exception:
        return b""


class NameBook:
    def __init__(self) -> None:
        self.names: dict[int, bytes] = {}
        self._nv: dict[int, Any] = {}  # NV index -> TPM2B_NV_PUBLIC, to follow WRITTEN
        self._contexts: dict[bytes, bytes] = {}  # saved context blob -> Name

    def name(self, handle: int) -> bytes | None:
        if handle_is_own_name(handle):
            return handle.to_bytes(4, "big")
        return self.names.get(handle)

    def names_of(self, handles: tuple[int, ...]) -> list[bytes] | None:
        out = []
        for h in handles:
            n = self.name(h)
            if n is None:
                return None
            out.append(n)
        return out

    def forget(self, handle: int) -> None:
        self.names.pop(handle, None)
        self._nv.pop(handle, None)

    def on_success(
        self,
        cc: int,
        cmd_handles: tuple[int, ...],
        cmd_params: tuple[Any, ...],
        rsp_handles: tuple[int, ...],
        rsp_params: tuple[Any, ...],
    ) -> None:
        with contextlib.suppress(Exception):  # an odd message must never stop annotation
            self._learn(cc, cmd_handles, cmd_params, rsp_handles, rsp_params)

    def _learn(
        self,
        cc: int,
        ch: tuple[int, ...],
        cp: tuple[Any, ...],
        rh: tuple[int, ...],
        rp: tuple[Any, ...],
    ) -> None:
        if cc == CC_CREATE_PRIMARY and rh and len(rp) >= 5:
            self.names[rh[0]] = _bytes(rp[4])
        elif cc == CC_CREATE_LOADED and rh and len(rp) >= 3:
            self.names[rh[0]] = _bytes(rp[2])
        elif cc in (CC_LOAD, CC_LOAD_EXTERNAL) and rh and len(cp) >= 2:
            self.names[rh[0]] = _bytes(cp[1].get_name())
        elif cc == CC_READ_PUBLIC and ch and len(rp) >= 2:
            self.names[ch[0]] = _bytes(rp[1])
        elif cc == CC_NV_READ_PUBLIC and ch and len(rp) >= 2:
            self._nv[ch[0]] = _copy(rp[0]) if not isinstance(rp[0], bytes) else None
            self.names[ch[0]] = _bytes(rp[1])
        elif cc == CC_NV_DEFINE and len(cp) >= 2:
            pub = cp[1]
            index = int(pub.nvPublic.nvIndex)
            self._nv[index] = _copy(pub)
            self.names[index] = _bytes(pub.get_name())
        elif cc in (CC_NV_UNDEFINE, CC_NV_UNDEFINE_SPECIAL) and len(ch) >= 2:
            idx = ch[1] if cc == CC_NV_UNDEFINE else ch[0]
            self.forget(idx)
        elif cc in NV_WRITES | {CC_NV_WRITELOCK, CC_NV_READLOCK} and len(ch) >= 2:
            bit = {CC_NV_WRITELOCK: NV_WRITELOCKED, CC_NV_READLOCK: NV_READLOCKED}.get(
                cc, NV_WRITTEN
            )
            pub = self._nv.get(ch[1])
            if pub is not None and not int(pub.nvPublic.attributes) & bit:
                pub.nvPublic.attributes = int(pub.nvPublic.attributes) | bit
                self.names[ch[1]] = _bytes(pub.get_name())
        elif cc == CC_EVICT and len(ch) >= 2 and cp:
            obj, persistent = ch[1], int(cp[0])
            if obj >> 24 == 0x80 and obj in self.names:
                self.names[persistent] = self.names[obj]
            elif obj >> 24 == 0x81:
                self.forget(obj)
        elif cc == CC_CONTEXT_SAVE and ch and rp and ch[0] in self.names:
            self._contexts[_bytes(rp[0].contextBlob)] = self.names[ch[0]]
            while len(self._contexts) > MAX_CONTEXTS:  # bounded: oldest forgotten first
                del self._contexts[next(iter(self._contexts))]
        elif cc == CC_CONTEXT_LOAD and rh and cp:
            name = self._contexts.get(_bytes(cp[0].contextBlob))
            if name is not None and rh[0] >> 24 not in (0x02, 0x03):
                self.names[rh[0]] = name
        elif cc == CC_FLUSH and cp:
            self.forget(int(cp[0]))


def _copy(pub: Any) -> Any:
    """A private copy of a TPM2B_NV_PUBLIC: following its WRITTEN/LOCKED bits must not
    change the decoded parameters of a frame already handed to the sinks."""
    try:
        return type(pub).unmarshal(pub.marshal())[0]
    except Exception:  # not a TPM2B_NV_PUBLIC we can copy (ciphertext): stop following it
        return None
