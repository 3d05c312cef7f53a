"""QemuCtrlSession: the data channel QEMU hands over is framed like every other data
connection, with the relay's machine (so `--max-message` holds there too)."""

from __future__ import annotations

import array
import asyncio
import socket
from pathlib import Path

from tpmsniff.codec.channels import DataChannel
from tpmsniff.codec.roles import SET_DATAFD
from tpmsniff.transport.addresses import parse_address
from tpmsniff.transport.conn import ConnCounter
from tpmsniff.transport.qemu import QemuCtrlSession

GETRANDOM = bytes.fromhex("80010000000c0000017b0010")


class _Pipeline:
    congested = False

    def __init__(self) -> None:
        self.pressure_listeners: list = []
        self.events_seen: list = []

    def conn_open(self, info) -> None:
        pass

    def events(self, conn, ts, events, number=None) -> None:
        self.events_seen += events

    def conn_close(self, conn, ts) -> None:
        pass


class _Relay:
    """The RelayContext a session needs; `machine()` is the relay's data machine."""

    def __init__(self, upstream: str) -> None:
        self.listen = parse_address("unix:/nonexistent")
        self.upstream = parse_address(upstream)
        self.pipeline = _Pipeline()
        self.counter = ConnCounter()
        self.clients: set = set()
        self.native = None  # the Python bridge (the native one: integration tests)
        self.made: list[DataChannel] = []

    def machine(self) -> DataChannel:
        m = DataChannel(64)  # as the daemon builds it from --max-message 64
        self.made.append(m)
        return m

    async def connect_upstream(self, factory):
        raise AssertionError("the QEMU data bridge connects to its own socketpair")


async def _swtpm_ctrl(server: socket.socket, got: asyncio.Future) -> None:
    """A control endpoint that takes CMD_SET_DATAFD's fd and answers success."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(server)
    conn.setblocking(True)
    fds = array.array("i")
    data, anc, _, _ = await asyncio.to_thread(conn.recvmsg, 4, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    conn.sendall(b"\0\0\0\0")
    got.set_result((data, socket.socket(fileno=fds[0]), conn))


def test_qemu_data_channel_uses_the_relays_machine(tmp_path: Path) -> None:
    async def run() -> None:
        path = str(tmp_path / "ctrl.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        server.setblocking(False)
        relay = _Relay(f"unix:{path}")
        qemu_ctrl, csock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        qemu_data, handed = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        csock.setblocking(False)
        got: asyncio.Future = asyncio.get_running_loop().create_future()
        swtpm = asyncio.ensure_future(_swtpm_ctrl(server, got))
        session = QemuCtrlSession(relay, csock, SET_DATAFD, [handed.detach()])
        running = asyncio.ensure_future(session.run())
        data, swtpm_data, ctrl_conn = await asyncio.wait_for(got, 10)
        assert data == SET_DATAFD
        for _ in range(200):  # the bridge is set up right after the fd went to swtpm
            if session.bridge is not None and session.bridge.up is not None:
                break
            await asyncio.sleep(0.01)
        assert session.bridge is not None
        assert relay.made and session.bridge.sm is relay.made[0]
        qemu_data.sendall(GETRANDOM)  # and it relays: QEMU's bytes reach swtpm's fd
        swtpm_data.setblocking(False)
        got_cmd = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(swtpm_data, 4096), 10)
        assert got_cmd == GETRANDOM
        qemu_ctrl.close()
        await asyncio.wait_for(running, 10)
        await swtpm
        for s in (qemu_data, swtpm_data, ctrl_conn, server):
            s.close()

    asyncio.run(run())
