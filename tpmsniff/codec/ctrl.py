"""Sans-IO codec for the swtpm control channel (CMD_* messages, wire-protocols §3).

The channel has no length field: swtpm reads each request by a per-command table within
500 ms, so requests are forwarded whole, and replies are split by what the request was.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..model import CtrlInfo, Framing, Message

CMD_NAMES: dict[int, str] = {
    0x01: "GET_CAPABILITY",
    0x02: "INIT",
    0x03: "SHUTDOWN",
    0x04: "GET_TPMESTABLISHED",
    0x05: "SET_LOCALITY",
    0x06: "HASH_START",
    0x07: "HASH_DATA",
    0x08: "HASH_END",
    0x09: "CANCEL_TPM_CMD",
    0x0A: "STORE_VOLATILE",
    0x0B: "RESET_TPMESTABLISHED",
    0x0C: "GET_STATEBLOB",
    0x0D: "SET_STATEBLOB",
    0x0E: "STOP",
    0x0F: "GET_CONFIG",
    0x10: "SET_DATAFD",
    0x11: "SET_BUFFERSIZE",
    0x12: "GET_INFO",
    0x13: "LOCK_STORAGE",
}
CMD = {v: k for k, v in CMD_NAMES.items()}

# Request body bytes swtpm needs before it acts (ctrlchannel.c); absent = none.
_BODY_MIN = {0x02: 4, 0x05: 1, 0x0B: 1, 0x0C: 12, 0x0D: 12, 0x07: 4, 0x11: 4, 0x12: 16, 0x13: 4}
# Fixed request bodies: these are complete once this many bytes are in.
_BODY_FIXED = {0x02: 4, 0x0C: 12, 0x11: 4, 0x12: 16, 0x13: 4}
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
            if cmd in (0x05, 0x0B):
                n = len(self._buf)  # 1..4 body bytes: forward all that came (§3.4)
            head = bytes(self._buf[:n])
            del self._buf[:n]
            if cmd in (0x07, 0x0D):
                body_len = _u32(head, 4) if cmd == 0x07 else _u32(head, 12)
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
    if cmd == 0x01:
        return 8
    if cmd == 0x04:
        return 4 if result in (0x03, 0x0A) else 8
    if cmd == 0x11:
        return 16 if result == 0 else 4
    if cmd == 0x0F:
        return 8 if result == 0 else 4
    if cmd == 0x0C:
        if result != 0 and len(buf) < 16:
            return 4
        if len(buf) < 16:
            return None
        return 16 + (_u32(buf, 12) if result == 0 else 0)
    if cmd == 0x12:
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
    if cmd == 0x02 and len(body) >= 4:
        flags = _u32(body, 0)
        f["flags"] = flags
        if flags & 1:
            f["delete_volatile"] = True
    elif cmd in (0x05, 0x0B) and body:
        f["locality"] = body[0]
    elif cmd in (0x0C, 0x0D) and len(body) >= 12:
        flags, btype, third = struct.unpack(">III", body[:12])
        f["blob"] = BLOB_TYPES.get(btype, btype)
        f["state_flags"] = flags
        f["offset" if cmd == 0x0C else "length"] = third
    elif cmd == 0x07 and len(body) >= 4:
        f["length"] = _u32(body, 0)
    elif cmd == 0x11 and len(body) >= 4:
        f["buffersize"] = _u32(body, 0)
    elif cmd == 0x12 and len(body) >= 12:
        f["flags"] = int.from_bytes(body[0:8], "big")
        f["offset"] = _u32(body, 8)
    elif cmd == 0x13 and len(body) >= 4:
        f["retries"] = _u32(body, 0)
    return CtrlInfo(cmd, ctrl_name(cmd), f)


def decode_response(cmd: int | None, raw: bytes) -> CtrlInfo:
    name = ctrl_name(cmd)
    if len(raw) < 4:
        return CtrlInfo(cmd, name, {"bytes": len(raw)})
    f: dict[str, object] = {}
    if cmd == 0x01 and len(raw) >= 8:
        caps = int.from_bytes(raw[0:8], "big")
        f["caps"] = f"0x{caps:x}"
        return CtrlInfo(cmd, name, f, 0)
    result = _u32(raw, 0)
    if result == 0:
        if cmd == 0x04 and len(raw) >= 5:
            f["established"] = raw[4]
        elif cmd == 0x11 and len(raw) >= 16:
            f["buffersize"], f["minsize"], f["maxsize"] = struct.unpack(">III", raw[4:16])
        elif cmd == 0x0F and len(raw) >= 8:
            f["flags"] = _u32(raw, 4)
    if cmd == 0x0C and len(raw) >= 16:
        f["state_flags"], f["totlength"], f["length"] = struct.unpack(">III", raw[4:16])
    elif cmd == 0x12 and result == 0 and len(raw) >= 12:
        f["totlength"], f["length"] = struct.unpack(">II", raw[4:12])
        f["json"] = raw[12:].rstrip(b"\0").decode("utf-8", "replace")
    return CtrlInfo(cmd, name, f, result)
