"""Sans-IO codec for the swtpm control channel (CMD_* messages, docs/protocols.md §7).

The channel has no length field: swtpm reads each request by a per-command table within
500 ms, so requests are forwarded whole, and replies are split by what the request was.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..model import CtrlInfo, Framing, Message


class Cmd(IntEnum):
    """swtpm control commands (swtpm's tpm_ioctl.h, CMD_*)."""

    GET_CAPABILITY = 0x01
    INIT = 0x02
    SHUTDOWN = 0x03
    GET_TPMESTABLISHED = 0x04
    SET_LOCALITY = 0x05
    HASH_START = 0x06
    HASH_DATA = 0x07
    HASH_END = 0x08
    CANCEL_TPM_CMD = 0x09
    STORE_VOLATILE = 0x0A
    RESET_TPMESTABLISHED = 0x0B
    GET_STATEBLOB = 0x0C
    SET_STATEBLOB = 0x0D
    STOP = 0x0E
    GET_CONFIG = 0x0F
    SET_DATAFD = 0x10
    SET_BUFFERSIZE = 0x11
    GET_INFO = 0x12
    LOCK_STORAGE = 0x13


CMD_NAMES: dict[int, str] = {c.value: c.name for c in Cmd}

# Request body bytes swtpm needs before it acts (ctrlchannel.c); absent = none.
_BODY_MIN: dict[int, int] = {
    Cmd.INIT: 4,
    Cmd.SET_LOCALITY: 1,
    Cmd.RESET_TPMESTABLISHED: 1,
    Cmd.GET_STATEBLOB: 12,
    Cmd.SET_STATEBLOB: 12,
    Cmd.HASH_DATA: 4,
    Cmd.SET_BUFFERSIZE: 4,
    Cmd.GET_INFO: 16,
    Cmd.LOCK_STORAGE: 4,
}
BLOB_TYPES = {1: "permanent", 2: "volatile", 3: "savestate"}
MAX_DECODE = 1 << 20  # control messages larger than this are relayed, decoded truncated


def ctrl_name(cmd: int | None) -> str:
    if cmd is None:
        return "CTRL?"
    return CMD_NAMES.get(cmd, f"CTRL_0x{cmd:08x}")


def _u32(b: bytes | bytearray, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


@dataclass(slots=True)
class _Streaming:
    """A SET_STATEBLOB / HASH_DATA body still arriving after its header went out."""

    remaining: int
    collected: bytearray


class CtrlRequestFramer:
    """Client→swtpm control requests.

    `feed` returns the writes to make upstream (each a whole request, or for the
    variable bodies of SET_STATEBLOB/HASH_DATA, header+available body then the rest as it
    comes) and the completed messages for decoding.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._stream: _Streaming | None = None

    def feed(self, data: bytes) -> tuple[list[bytes], list[Message]]:
        writes: list[bytes] = []
        done: list[Message] = []
        self._buf += data
        while self._buf:
            if self._stream is not None:
                take = min(self._stream.remaining, len(self._buf))
                chunk = bytes(self._buf[:take])
                del self._buf[:take]
                writes.append(chunk)
                self._collect(chunk, done)
                continue
            n = self._needed()
            if n is None or len(self._buf) < n:
                break
            cmd = _u32(self._buf, 0)
            if cmd in (Cmd.SET_LOCALITY, Cmd.RESET_TPMESTABLISHED):
                n = len(self._buf)  # 1..4 body bytes: forward all that came (protocols.md §7.4)
            head = bytes(self._buf[:n])
            del self._buf[:n]
            if cmd in (Cmd.HASH_DATA, Cmd.SET_STATEBLOB):
                body_len = _u32(head, 4) if cmd == Cmd.HASH_DATA else _u32(head, 12)
                self._stream = _Streaming(body_len, bytearray(head))
                take = min(body_len, len(self._buf))
                first = head + bytes(self._buf[:take])
                del self._buf[:take]
                writes.append(first)
                self._collect(first[len(head) :], done)
            else:
                writes.append(head)
                done.append(Message(head, Framing.CTRL))
        return writes, done

    def flush(self) -> tuple[bytes, Message] | None:
        """At EOF: (bytes not yet forwarded, the truncated message), or None."""
        note = "control message truncated at EOF"
        if self._stream is not None:
            raw = bytes(self._stream.collected)
            self._stream = None
            return b"", Message(raw, Framing.UNFRAMED, note=note)
        if self._buf:
            raw = bytes(self._buf)
            self._buf.clear()
            return raw, Message(raw, Framing.UNFRAMED, note=note)
        return None

    def _needed(self) -> int | None:
        if len(self._buf) < 4:
            return None
        cmd = _u32(self._buf, 0)
        return 4 + _BODY_MIN.get(cmd, 0)

    def _collect(self, chunk: bytes, done: list[Message]) -> None:
        st = self._stream
        assert st is not None
        st.remaining -= len(chunk)
        if len(st.collected) < MAX_DECODE:
            st.collected += chunk[: MAX_DECODE - len(st.collected)]
        if st.remaining <= 0:
            done.append(Message(bytes(st.collected), Framing.CTRL))
            self._stream = None


def response_length(cmd: int | None, buf: bytes | bytearray) -> int | None:
    """Total length of the swtpm reply to `cmd` starting at buf, or None if unknown yet."""
    if len(buf) < 4:
        return None
    result = _u32(buf, 0)
    if cmd == Cmd.GET_CAPABILITY:
        return 8
    if cmd == Cmd.GET_TPMESTABLISHED:
        return (
            4 if result in (0x03, 0x0A) else 8
        )  # TPM_RC_FAILURE, TPM_RC_NO_RESULT-class errors: no body
    if cmd == Cmd.SET_BUFFERSIZE:
        return 16 if result == 0 else 4
    if cmd == Cmd.GET_CONFIG:
        return 8 if result == 0 else 4
    if cmd == Cmd.GET_STATEBLOB:
        if result != 0 and len(buf) < 16:
            return 4
        if len(buf) < 16:
            return None
        return 16 + (_u32(buf, 12) if result == 0 else 0)
    if cmd == Cmd.GET_INFO:
        if result != 0:
            return 4
        if len(buf) < 12:
            return None
        return 12 + _u32(buf, 8)
    return 4


class CtrlResponseFramer:
    """Splits a copy of the swtpm→client control stream, given the requests sent."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: list[int | None] = []

    @property
    def pending(self) -> int:
        """Requests whose responses have not come yet."""
        return len(self._pending)

    def expect(self, cmd: int | None) -> None:
        self._pending.append(cmd)

    def feed(self, data: bytes) -> list[tuple[int | None, Message]]:
        self._buf += data
        out: list[tuple[int | None, Message]] = []
        while self._buf:
            cmd = self._pending[0] if self._pending else None
            n = response_length(cmd, self._buf)
            if n is None or len(self._buf) < n:
                break
            raw = bytes(self._buf[:n])
            del self._buf[:n]
            if self._pending:
                self._pending.pop(0)
            out.append((cmd, Message(raw, Framing.CTRL)))
        return out

    def flush(self) -> tuple[int | None, Message] | None:
        if not self._buf:
            return None
        cmd = self._pending.pop(0) if self._pending else None
        raw = bytes(self._buf)
        self._buf.clear()
        return cmd, Message(raw, Framing.UNFRAMED, note="control reply truncated at EOF")


def decode_request(raw: bytes) -> CtrlInfo:
    if len(raw) < 4:
        return CtrlInfo(None, "CTRL?", {"bytes": len(raw)})
    cmd = _u32(raw, 0)
    body = raw[4:]
    f: dict[str, object] = {}
    if cmd == Cmd.INIT and len(body) >= 4:
        flags = _u32(body, 0)
        f["flags"] = flags
        if flags & 1:
            f["delete_volatile"] = True
    elif cmd in (Cmd.SET_LOCALITY, Cmd.RESET_TPMESTABLISHED) and body:
        f["locality"] = body[0]
    elif cmd in (Cmd.GET_STATEBLOB, Cmd.SET_STATEBLOB) and len(body) >= 12:
        flags, btype, third = struct.unpack(">III", body[:12])
        f["blob"] = BLOB_TYPES.get(btype, btype)
        f["state_flags"] = flags
        f["offset" if cmd == Cmd.GET_STATEBLOB else "length"] = third
    elif cmd == Cmd.HASH_DATA and len(body) >= 4:
        f["length"] = _u32(body, 0)
    elif cmd == Cmd.SET_BUFFERSIZE and len(body) >= 4:
        f["buffersize"] = _u32(body, 0)
    elif cmd == Cmd.GET_INFO and len(body) >= 12:
        f["flags"] = int.from_bytes(body[0:8], "big")
        f["offset"] = _u32(body, 8)
    elif cmd == Cmd.LOCK_STORAGE and len(body) >= 4:
        f["retries"] = _u32(body, 0)
    return CtrlInfo(cmd, ctrl_name(cmd), f)


def decode_response(cmd: int | None, raw: bytes) -> CtrlInfo:
    name = ctrl_name(cmd)
    if len(raw) < 4:
        return CtrlInfo(cmd, name, {"bytes": len(raw)})
    f: dict[str, object] = {}
    if cmd == Cmd.GET_CAPABILITY and len(raw) >= 8:
        caps = int.from_bytes(raw[0:8], "big")
        f["caps"] = f"0x{caps:x}"
        return CtrlInfo(cmd, name, f, 0)
    result = _u32(raw, 0)
    if result == 0:
        if cmd == Cmd.GET_TPMESTABLISHED and len(raw) >= 5:
            f["established"] = raw[4]
        elif cmd == Cmd.SET_BUFFERSIZE and len(raw) >= 16:
            f["buffersize"], f["minsize"], f["maxsize"] = struct.unpack(">III", raw[4:16])
        elif cmd == Cmd.GET_CONFIG and len(raw) >= 8:
            f["flags"] = _u32(raw, 4)
    if cmd == Cmd.GET_STATEBLOB and len(raw) >= 16:
        f["state_flags"], f["totlength"], f["length"] = struct.unpack(">III", raw[4:16])
    elif cmd == Cmd.GET_INFO and result == 0 and len(raw) >= 12:
        f["totlength"], f["length"] = struct.unpack(">II", raw[4:12])
        f["json"] = raw[12:].rstrip(b"\0").decode("utf-8", "replace")
    return CtrlInfo(cmd, name, f, result)
