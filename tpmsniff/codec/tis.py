"""TIS/FIFO register accesses -> TPM messages (sans-IO), for captures of physical buses.

A logic analyser on SPI, LPC or I2C sees register reads and writes, not messages. The TCG
PC Client Platform TPM Profile (PTP) FIFO interface says how they add up: bytes written
to TPM_DATA_FIFO (0x24) or TPM_XDATA_FIFO (0x80) are the command, bytes read from them
the response, TPM_STS (0x18) writes say commandReady (abort / go idle), tpmGo (execute)
and responseRetry (send the response again). Message boundaries come from the size in
the 10-byte header, never from a change of direction, and each locality has its own
state. Whatever does not add up is a `BusWarning` with the time and place it happened:
callers that must fail closed (`check`) treat any warning as a damaged input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import Direction

REG_ACCESS = 0x00
REG_STS = 0x18
REG_DATA_FIFO = 0x24
REG_XDATA_FIFO = 0x80
STS_COMMAND_READY = 0x40
STS_TPM_GO = 0x20
STS_RESPONSE_RETRY = 0x02
HEADER = 10
MAX_MESSAGE = 1 << 16  # a bus message larger than this is not a TPM message


def is_fifo(reg: int) -> bool:
    """DATA_FIFO (0x24-0x27) or XDATA_FIFO (0x80-0x83), by the transfer's start address."""
    return REG_DATA_FIFO <= reg < REG_DATA_FIFO + 4 or REG_XDATA_FIFO <= reg < REG_XDATA_FIFO + 4


@dataclass(frozen=True, slots=True)
class Access:
    """One register read or write as the bus showed it (wait states already removed)."""

    ts: float  # seconds, as the capture states them (0.0 when it has none)
    write: bool
    locality: int
    reg: int  # register offset within the locality's 4 KiB space
    data: bytes
    where: str = ""  # place in the input, e.g. "line 12"


@dataclass(frozen=True, slots=True)
class BusMessage:
    """One whole TPM command or response."""

    ts: float  # time of its first byte
    direction: Direction
    locality: int
    raw: bytes
    where: str


@dataclass(frozen=True, slots=True)
class BusWarning:
    """Something in the capture that does not add up, with where and when it happened."""

    ts: float | None
    where: str
    text: str

    def line(self) -> str:
        at = [self.where] if self.where else []
        if self.ts is not None:
            at.append(f"t={self.ts:.9f}s")
        return f"{', '.join(at)}: {self.text}" if at else self.text


@dataclass(slots=True)
class _Buf:
    data: bytearray = field(default_factory=bytearray)
    ts: float = 0.0
    where: str = ""

    def size(self) -> int | None:
        return int.from_bytes(self.data[2:6], "big") if len(self.data) >= HEADER else None

    def progress(self) -> str:
        size = self.size()
        return f"{len(self.data)} of {size if size is not None else '?'} bytes"


@dataclass(slots=True)
class _Locality:
    cmd: _Buf = field(default_factory=_Buf)
    rsp: _Buf = field(default_factory=_Buf)
    outstanding: _Buf | None = None  # the last complete command, until its response
    last: bytes | None = None  # the last response emitted
    resend: bytes | None = None  # after responseRetry: the response already emitted

    @property
    def busy(self) -> bool:
        return bool(self.cmd.data or self.rsp.data or self.outstanding)


Output = BusMessage | BusWarning


class TisAssembler:
    """Feed `Access`es in capture order; get messages and warnings back."""

    def __init__(self) -> None:
        self._loc: dict[int, _Locality] = {}
        self._last: int | None = None  # locality of the last FIFO access

    def _state(self, loc: int) -> _Locality:
        return self._loc.setdefault(loc, _Locality())

    def feed(self, a: Access) -> list[Output]:
        out: list[Output] = []
        st = self._state(a.locality)
        if is_fifo(a.reg) and a.data:
            if self._last is not None and self._last != a.locality:
                other = self._loc.get(self._last)
                if other is not None and (other.cmd.data or other.rsp.data):
                    out.append(
                        self._warn(
                            a,
                            f"locality {a.locality} uses the FIFO while locality "
                            f"{self._last} is mid-message",
                        )
                    )
            self._last = a.locality
            if a.write:
                self._write(st, a, out)
            else:
                self._read(st, a, out)
        elif a.reg == REG_STS and a.write and a.data:
            self._sts_write(st, a, a.data[0], out)
        return out

    @staticmethod
    def _warn(a: Access, text: str) -> BusWarning:
        return BusWarning(a.ts, a.where, f"locality {a.locality}: {text}")

    def _write(self, st: _Locality, a: Access, out: list[Output]) -> None:
        if st.rsp.data:
            out.append(self._warn(a, f"response abandoned after {st.rsp.progress()}"))
            st.rsp = _Buf()
        if st.outstanding is not None and not st.cmd.data:
            out.append(self._warn(a, "a new command was written before the last one's response"))
            st.outstanding = None
        st.resend = None
        if not st.cmd.data:
            st.cmd = _Buf(bytearray(), a.ts, a.where)
        st.cmd.data += a.data
        msg = self._complete(st.cmd, a, "command", out)
        if msg is not None:
            out.append(BusMessage(st.cmd.ts, Direction.COMMAND, a.locality, msg, st.cmd.where))
            st.outstanding = st.cmd
            st.cmd = _Buf()
        elif not st.cmd.data:
            st.cmd = _Buf()

    def _read(self, st: _Locality, a: Access, out: list[Output]) -> None:
        if st.cmd.data:
            out.append(self._warn(a, f"response read while the command has {st.cmd.progress()}"))
            st.cmd = _Buf()
        if not st.rsp.data:
            if st.outstanding is None and st.resend is None:
                out.append(self._warn(a, "response read with no command before it"))
            st.rsp = _Buf(bytearray(), a.ts, a.where)
        st.rsp.data += a.data
        msg = self._complete(st.rsp, a, "response", out)
        if msg is None:
            if not st.rsp.data:
                st.rsp = _Buf()
            return
        if st.resend is not None and msg == st.resend:
            pass  # the same response again after responseRetry: already emitted
        else:
            if st.resend is not None:
                out.append(self._warn(a, "the response sent again after a retry differs"))
            out.append(BusMessage(st.rsp.ts, Direction.RESPONSE, a.locality, msg, st.rsp.where))
        st.last, st.resend = msg, None
        st.outstanding = None
        st.rsp = _Buf()

    def _complete(self, buf: _Buf, a: Access, what: str, out: list[Output]) -> bytes | None:
        """The whole message once `buf` holds its header's size; bytes past it are dropped."""
        size = buf.size()
        if size is None:
            return None
        if size < HEADER or size > MAX_MESSAGE:
            out.append(self._warn(a, f"{what} header states size {size}: not a TPM message"))
            buf.data.clear()
            return None
        if len(buf.data) < size:
            return None
        if len(buf.data) > size:
            out.append(
                self._warn(a, f"{len(buf.data) - size} byte(s) past the {what}'s size {size}")
            )
        return bytes(buf.data[:size])

    def _sts_write(self, st: _Locality, a: Access, sts: int, out: list[Output]) -> None:
        if sts & STS_COMMAND_READY:
            if st.cmd.data:
                out.append(
                    self._warn(a, f"command abandoned (commandReady) after {st.cmd.progress()}")
                )
            if st.rsp.data:
                out.append(
                    self._warn(a, f"response abandoned (commandReady) after {st.rsp.progress()}")
                )
            if st.outstanding is not None and not st.rsp.data:
                out.append(self._warn(a, "command canceled (commandReady) before its response"))
            st.cmd, st.rsp, st.outstanding, st.resend = _Buf(), _Buf(), None, None
        if sts & STS_TPM_GO and st.cmd.data:
            out.append(self._warn(a, f"tpmGo with the command at {st.cmd.progress()}"))
            st.cmd = _Buf()
        if sts & STS_RESPONSE_RETRY:
            if not st.rsp.data and st.outstanding is None:
                st.resend = st.last  # the whole response again: it was emitted already
            st.rsp = _Buf()  # the TPM starts the response again from its first byte

    def finish(self) -> list[BusWarning]:
        """What was left unfinished when the capture ended."""
        out: list[BusWarning] = []
        for loc, st in sorted(self._loc.items()):
            if st.cmd.data:
                out.append(
                    BusWarning(
                        st.cmd.ts,
                        st.cmd.where,
                        f"locality {loc}: command never completed ({st.cmd.progress()})",
                    )
                )
            if st.rsp.data:
                out.append(
                    BusWarning(
                        st.rsp.ts,
                        st.rsp.where,
                        f"locality {loc}: response never completed ({st.rsp.progress()})",
                    )
                )
            elif st.outstanding is not None:
                out.append(
                    BusWarning(
                        st.outstanding.ts,
                        st.outstanding.where,
                        f"locality {loc}: the capture ends before the last command's response",
                    )
                )
        self._loc.clear()
        return out
