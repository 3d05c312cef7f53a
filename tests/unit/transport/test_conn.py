"""The client connection: a state machine or pipeline that raises never reaches the relay;
the bytes still go, unchanged."""

from __future__ import annotations

import asyncio

from tpmsniff.codec.channels import DataChannel
from tpmsniff.model import Channel
from tpmsniff.transport.conn import ClientConn, ConnCounter, Passthrough

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


class _Sink:
    pressure_listeners: list = []
    congested = False

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def conn_open(self, info) -> None:
        if self.fail:
            raise RuntimeError("sink bug")

    def events(self, conn, ts, events, number=None) -> None:
        raise RuntimeError("encoder bug")

    def conn_close(self, conn, ts) -> None:
        if self.fail:
            raise RuntimeError("sink bug")


class _Boom(DataChannel):
    def from_client(self, data: bytes):
        raise ValueError("framer bug")


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str):
        return None


class _Relay:
    def __init__(self) -> None:
        self.pipeline = _Sink(fail=True)
        self.counter = ConnCounter()
        self.clients: set = set()
        self.native = None
        self.listen = type("L", (), {"path": "x"})()
        self.upstream = "up"

    def machine(self):
        return _Boom()

    def admit(self, conn) -> bool:
        return True

    async def connect_upstream(self, factory):
        proto = factory()
        t = _Transport()
        proto.connection_made(t)
        return t, proto


def test_machine_or_pipeline_that_raises_never_reaches_the_relay():
    async def run() -> tuple[list[bytes], ClientConn]:
        relay = _Relay()
        c = ClientConn(relay)
        c.connection_made(_Transport())
        await c._connecting
        c.data_received(GETRANDOM)  # the machine raises: bytes still go, unchanged
        c.data_received(b"more")
        assert c.up is not None and c.up.transport is not None
        return c.up.transport.out, c

    out, c = asyncio.run(run())
    assert out == [GETRANDOM, b"more"]
    assert isinstance(c.sm, Passthrough) and c.sm.channel is Channel.TPM
