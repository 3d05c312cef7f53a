"""Sans-IO framing of TPM data channels: bytes in, whole messages out.

swtpm does not reassemble commands (docs/protocols.md §4): each command must reach it in
exactly one write. `RequestFramer` turns arbitrary client reads into whole requests;
`ResponseFramer` recovers message boundaries from a *copy* of the response stream (the
relay forwards response bytes as they arrive and never waits for this).
"""

from __future__ import annotations

from ..model import Framing, Message

HEADER = 10
MSSIM_SEND_COMMAND = 8
MSSIM_PREFIX = 9  # u32 8 | u8 locality | u32 length
MSSIM_RSP_PREFIX = 4  # u32 length ... u32 0
TPM2_TAGS = (0x8001, 0x8002)
TPM12_TAGS = (0x00C1, 0x00C2, 0x00C3, 0x00C4, 0x00C5, 0x00C6)
VALID_TAGS = frozenset(TPM2_TAGS + TPM12_TAGS)
DEFAULT_MAX_MESSAGE = 4096


def _whole(data: bytes) -> bool:
    """True if data is exactly one TPM message with a valid tag."""
    return (
        len(data) >= HEADER
        and int.from_bytes(data[2:6], "big") == len(data)
        and int.from_bytes(data[0:2], "big") in VALID_TAGS
    )


def _unframed(buf: bytes | bytearray, why: str) -> Message:
    return Message(bytes(buf), Framing.UNFRAMED, note=why)


class _Framer:
    """What both framers share: a bounded buffer drained into whole messages."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    def _next(self) -> Message | None:
        raise NotImplementedError

    def _drain(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while self._buf:
            msg = self._next()
            if msg is None:
                break
            out.append(msg)
        return out

    def flush(self) -> Message | None:
        """Release whatever is buffered (at EOF) as an UNFRAMED message."""
        if not self._buf:
            return None
        msg = _unframed(self._buf, "truncated at end of stream")
        self._buf.clear()
        return msg


class RequestFramer(_Framer):
    """Reassembles client→TPM requests (raw TPM or MS-sim prefixed) by their size field.

    Anything that cannot be a request (bad tag, size < 10 or > max) is released at once
    as UNFRAMED with everything buffered, so the buffer never exceeds one maximal message.
    """

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        # Fast path: the usual case is exactly one whole raw command per read.
        if not self._buf and _whole(data) and len(data) <= self.max_message:
            return [Message(data, Framing.RAW)]
        return self._drain(data)

    def one(self, data: bytes) -> Message | None:
        """`data` as one request if it is exactly one whole raw TPM command and nothing
        is buffered (the usual read), else None."""
        if not self._buf and _whole(data) and len(data) <= self.max_message:
            return Message(data, Framing.RAW)
        return None

    def add(self, data: bytes) -> None:
        """Buffer bytes without framing them yet (see `next`)."""
        self._buf += data

    def next(self) -> Message | None:
        """The next whole request from the buffer, or None until more bytes arrive: lets
        a caller frame lazily, so one large read never becomes thousands of messages."""
        return self._next() if self._buf else None

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _next(self) -> Message | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        tag = int.from_bytes(buf[0:2], "big")
        if tag in VALID_TAGS:
            if len(buf) < 6:
                return None
            size = int.from_bytes(buf[2:6], "big")
            if size < HEADER or size > self.max_message:
                return self._bad(f"TPM size field {size} out of range")
            if len(buf) < size:
                return None
            return Message(self._take(size), Framing.RAW)
        if tag == 0 and len(buf) >= 4:
            if int.from_bytes(buf[0:4], "big") != MSSIM_SEND_COMMAND:
                return self._bad("not a TPM message")
            if len(buf) < MSSIM_PREFIX:
                return None
            size = int.from_bytes(buf[5:9], "big")
            if size < HEADER or size > self.max_message:
                return self._bad(f"MS-sim length {size} out of range")
            if len(buf) < MSSIM_PREFIX + size:
                return None
            locality = buf[4]
            return Message(self._take(MSSIM_PREFIX + size), Framing.MSSIM, MSSIM_PREFIX, locality)
        if tag == 0:
            return None  # need 4 bytes to tell MS-sim from garbage
        return self._bad("not a TPM message")

    def _bad(self, why: str) -> Message:
        msg = _unframed(self._buf, why)
        self._buf.clear()
        return msg


class ResponseFramer(_Framer):
    """Splits a copy of the TPM→client stream into responses.

    The caller says what framing the outstanding request used (`expect`), because an
    MS-sim response (`u32 len | rsp | u32 0`) cannot be told from raw bytes alone.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        super().__init__(max_message)
        self._expect: list[Framing] = []

    def expect(self, framing: Framing) -> None:
        self._expect.append(framing)

    @property
    def outstanding(self) -> int:
        return len(self._expect)

    def feed(self, data: bytes) -> list[Message]:
        raw_next = not self._expect or self._expect[0] is Framing.RAW
        if not self._buf and raw_next and _whole(data) and len(data) <= self.max_message:
            if self._expect:
                self._expect.pop(0)
            return [Message(data, Framing.RAW)]
        return self._drain(data)

    def _next(self) -> Message | None:
        buf = self._buf
        mssim = bool(self._expect) and self._expect[0] is Framing.MSSIM
        off = MSSIM_RSP_PREFIX if mssim else 0
        if len(buf) < off + 6:
            return None
        size = int.from_bytes(buf[off + 2 : off + 6], "big")
        if mssim and int.from_bytes(buf[0:4], "big") != size:
            return self._bad("MS-sim length does not match TPM size")
        if size < HEADER or size > self.max_message:
            return self._bad(f"TPM size field {size} out of range")
        total = size + (2 * MSSIM_RSP_PREFIX if mssim else 0)
        if len(buf) < total:
            return None
        if self._expect:
            self._expect.pop(0)
        raw = bytes(buf[:total])
        del buf[:total]
        return Message(raw, Framing.MSSIM if mssim else Framing.RAW, off)

    def _bad(self, why: str) -> Message:
        if self._expect:
            self._expect.pop(0)
        msg = _unframed(self._buf, why)
        self._buf.clear()
        return msg
