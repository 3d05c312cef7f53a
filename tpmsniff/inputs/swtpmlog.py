"""swtpm `--log level>=2` hex dumps: the ground truth of what swtpm saw, as an input.

Handles `prefix=` on every line, `Ctrl Cmd`/`Ctrl Rsp` (+ `Continued`) blocks, and the
libtpms debug lines of level >= 5, which are ignored. Each dump is one message, framed
by the relay's own framers and annotated like live traffic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from ..codec.annotate import Annotator
from ..codec.framing import RequestFramer, ResponseFramer
from ..model import Channel, Direction, Event, Frame, Framing, Message

_HEAD = re.compile(
    r"(?P<kind>SWTPM_IO_Read|SWTPM_IO_Write|Ctrl Cmd|Ctrl Rsp Continued|Ctrl Rsp):"
    r"\s+length\s+(?P<n>\d+)\s*$"
)
_HEX = re.compile(r"^(?:[0-9A-F]{2} )*[0-9A-F]{2} ?$")


@dataclass(frozen=True, slots=True)
class LogMessage:
    kind: str  # "tpm-cmd" | "tpm-rsp" | "ctrl-cmd" | "ctrl-rsp"
    data: bytes
    length: int  # the message's length on the wire (ctrl dumps are cut at 1024 bytes)
    line: int  # 1-based line of the header

    @property
    def complete(self) -> bool:
        return len(self.data) == self.length


_KINDS = {
    "SWTPM_IO_Read": "tpm-cmd",
    "SWTPM_IO_Write": "tpm-rsp",
    "Ctrl Cmd": "ctrl-cmd",
    "Ctrl Rsp": "ctrl-rsp",
}


def _strip_prefix(line: str, prefix: str | None) -> str:
    if prefix and line.startswith(prefix):
        return line[len(prefix) :]
    return line


def parse_lines(lines: Iterable[str], prefix: str | None = None) -> Iterator[LogMessage]:
    """Yield every dumped message in log order. The line prefix is learnt if not given."""
    kind = None
    want = announced = 0  # bytes the dump holds / bytes the message had on the wire
    buf = bytearray()
    start = 0
    for no, raw in enumerate(lines, 1):
        line = _strip_prefix(raw.rstrip("\n"), prefix)
        m = _HEAD.search(line)
        if m and prefix is None:
            # `--log ...,prefix=P` puts P before every line: learn it from the header
            prefix = line[: m.start()].rstrip() or None
            line = _strip_prefix(line, prefix)
            m = _HEAD.search(line)
        if m:
            k = m.group("kind")
            if k == "Ctrl Rsp Continued" and kind == "ctrl-rsp":
                # GET_STATEBLOB: swtpm dumps the 16-byte reply header, then the blob that
                # follows it in the same write, cut at 1024 bytes. One reply: its length
                # is the header's plus the blob length the header announces.
                more = int(m.group("n"))
                total = len(buf) + (int.from_bytes(buf[12:16], "big") if len(buf) >= 16 else more)
                want, announced = want + more, total
                continue
            if kind is not None:
                yield LogMessage(kind, bytes(buf), announced, start)
            kind = _KINDS.get(k, "ctrl-rsp")  # a continuation without its reply: one of its own
            want = announced = int(m.group("n"))
            start = no
            buf = bytearray()
            continue
        if kind is None:
            continue
        body = line.strip()
        if body and _HEX.match(body) and len(buf) < want:
            buf += bytes.fromhex(body)
        elif body:  # a libtpms or other line ends the dump
            yield LogMessage(kind, bytes(buf), announced, start)
            kind = None
    if kind is not None:
        yield LogMessage(kind, bytes(buf), announced, start)


def parse_file(path: str, prefix: str | None = None) -> list[LogMessage]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return list(parse_lines(fh, prefix))


# -- frames ------------------------------------------------------------------------
LOG_MAX_MESSAGE = 1 << 24  # swtpm logged it, so it was one message whatever its size


def _tpm_message(data: bytes, command: bool, request: Framing) -> Message:
    """Frame one logged TPM dump with the relay's own framers (raw or MS-sim)."""
    if command:
        msgs = RequestFramer(LOG_MAX_MESSAGE).feed(data)
    else:
        framer = ResponseFramer(LOG_MAX_MESSAGE)
        framer.expect(request)
        msgs = framer.feed(data)
    if len(msgs) == 1 and msgs[0].framing is not Framing.UNFRAMED:
        return msgs[0]
    return Message(data, Framing.RAW)  # decoded as far as its header allows


def frames_from_log(path: str, ann: Annotator) -> Iterator[Frame]:
    """swtpm --log level>=2: TPM messages on stream 1, control messages on stream 2."""
    last_ctrl: int | None = None
    request = Framing.RAW
    for i, m in enumerate(parse_file(path), 1):
        if m.kind.startswith("tpm"):
            cmd = m.kind == "tpm-cmd"
            msg = _tpm_message(m.data, cmd, request)
            if cmd:
                request = msg.framing
            ev = Event(Channel.TPM, Direction.COMMAND if cmd else Direction.RESPONSE, msg)
            conn = 1
        else:
            cmd = m.kind == "ctrl-cmd"
            if cmd:
                last_ctrl = int.from_bytes(m.data[:4], "big") if len(m.data) >= 4 else None
            ev = Event(
                Channel.CTRL,
                Direction.COMMAND if cmd else Direction.RESPONSE,
                Message(m.data, Framing.CTRL),
                None if cmd else last_ctrl,
            )
            conn = 2
        f = ann.annotate(conn, 0.0, ev, i)
        if not m.complete:
            f = replace(f, error=f"swtpm logged {len(m.data)} of {m.length} bytes")
        yield f
