"""A sink that records what it is given, and one GetRandom command and response."""

from __future__ import annotations

from tpmsniff.model import Channel, ConnInfo, Direction, Event, Frame, Framing, Message
from tpmsniff.sinks.base import BaseSink

GETRANDOM = bytes.fromhex("80010000000c0000017b0008")
RSP = bytes.fromhex("8001000000140000000000080102030405060708")
CMD_EV = Event(Channel.TPM, Direction.COMMAND, Message(GETRANDOM, Framing.RAW))
RSP_EV = Event(Channel.TPM, Direction.RESPONSE, Message(RSP, Framing.RAW))


class Recorder(BaseSink):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def conn_open(self, info: ConnInfo) -> None:
        self.calls.append(("open", info.conn))

    def frame(self, f: Frame) -> None:
        self.calls.append(("frame", f.name))

    def conn_close(self, conn: int, ts: float) -> None:
        self.calls.append(("close", conn))

    def control(self, what: str) -> None:
        self.calls.append(("control", what))
