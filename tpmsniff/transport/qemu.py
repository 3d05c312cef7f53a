"""QEMU `-tpmdev emulator` control channel with CMD_SET_DATAFD fd substitution.

QEMU never sends TPM commands on its control socket: it hands swtpm one end of a
socketpair with CMD_SET_DATAFD over SCM_RIGHTS (docs/protocols.md §8). To see the TPM
traffic tpmsniff keeps QEMU's fd, gives swtpm one end of its own socketpair with the same
4 bytes in one sendmsg, and relays between the two through the ordinary data relay: the
native one when it runs (as every TPM data channel), else `ClientConn`. Every read from
QEMU uses recvmsg with room for fds, so none is ever dropped.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import structlog

from ..codec.channels import CtrlChannel
from ..codec.ctrl import Cmd
from ..codec.roles import SET_DATAFD
from ..model import Channel, ConnInfo, Direction, Event
from .conn import ChannelMachine, ClientConn, Guarded, RelayContext
from .endpoints import connect_upstream
from .fdpass import recv_with_fds, wait_fd
from .limits import RateLimited, guarded
from .native import NativeConn

log = structlog.get_logger("tpmsniff.qemu")
_session_errors = RateLimited(log, "qemu control channel error; relaying byte for byte")


class QemuCtrlSession(Guarded):
    """One QEMU control connection, its upstream swtpm control connection and data bridge."""

    machine_errors = _session_errors

    def __init__(
        self, relay: RelayContext, csock: socket.socket, first: bytes, fds: list[int]
    ) -> None:
        self.relay = relay
        self.csock = csock
        self.first = first
        self.first_fds = fds
        self.usock: socket.socket | None = None
        self.sm: ChannelMachine = CtrlChannel()
        self.conn = relay.counter.next()
        self.bridge: ClientConn | NativeConn | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """A control request is outstanding (its bridge counts with its relay's)."""
        return not self._closed and self.sm.waiting

    def _close_bridge(self) -> None:
        b = self.bridge
        if isinstance(b, NativeConn):
            b.close()
        elif b is not None and b.transport is not None:
            b.transport.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        up = self.relay.upstream
        try:
            usock = await connect_upstream(up)
        except OSError as exc:
            log.warning(
                "upstream connect failed; closing client",
                conn=self.conn,
                upstream=str(up),
                error=exc.strerror or str(exc),
            )
            for fd in self.first_fds:
                os.close(fd)
            self.csock.close()
            return
        self.usock = usock
        p = self.relay.pipeline
        info = ConnInfo(self.conn, Channel.CTRL, "qemu-ctrl", str(up), time.time())
        guarded(lambda: p.conn_open(info))
        log.info("qemu control channel", conn=self.conn)
        down = loop.create_task(self._from_swtpm())
        try:
            data, fds = self.first, self.first_fds
            while data and not self._closed:
                await self._from_client(data, fds)
                data, fds = await recv_with_fds(self.csock)
        except OSError as exc:  # either side went away mid-message: close both
            log.info("qemu control channel error", conn=self.conn, error=exc.strerror or str(exc))
        finally:
            writes, events = self.machine_call(self.sm.client_eof, None)
            for w in writes:
                with contextlib.suppress(OSError):
                    await loop.sock_sendall(usock, w)
            self._publish(events)
            self.close()
            down.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await down
            self._publish(self.machine_call(lambda: ([], self.sm.server_eof()), None)[1])
            guarded(lambda: p.conn_close(self.conn, time.time()))
            usock.close()
            self.csock.close()
            log.info("qemu control channel closed", conn=self.conn)

    def _publish(self, events: list[Event], ts: float | None = None) -> None:
        if events:
            when = time.time() if ts is None else ts
            guarded(lambda: self.relay.pipeline.events(self.conn, when, events))

    def _upstream(self) -> socket.socket:
        assert self.usock is not None, "used only after run() connected it"
        return self.usock

    async def _from_client(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        ts = time.time()
        writes, events = self.machine_call(lambda: self.sm.from_client(data), data)
        for w in writes:
            if w == SET_DATAFD and fds:
                await self._set_datafd(fds.pop(0))
            else:
                await loop.sock_sendall(self._upstream(), w)
        for fd in fds:
            log.warning("closing unexpected fd from QEMU", conn=self.conn)
            os.close(fd)
        self._publish(events, ts)

    async def _set_datafd(self, qfd: int) -> None:
        """Give swtpm our own socketpair end; bridge QEMU's fd to the other end."""
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        qsock = socket.socket(fileno=qfd)
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))]
            while True:
                try:
                    self._upstream().sendmsg([SET_DATAFD], anc)  # bytes and fd in one call
                    break
                except BlockingIOError:
                    await wait_fd(self._upstream().fileno(), write=True)
        finally:
            theirs.close()  # swtpm's exit now gives EOF on `mine`; closing `mine` a HUP
        self._close_bridge()  # a second SET_DATAFD replaces the first
        mine.setblocking(False)
        qsock.setblocking(False)
        peer = f"qemu-data (ctrl conn {self.conn})"
        native = self.relay.native
        if native is not None:

            async def given() -> socket.socket:
                return mine

            conn = self.relay.counter.next()
            self.bridge = await native.hand_over(qsock, b"", conn, peer, given, "swtpm data fd")
            return

        async def connect_mine(factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
            return await loop.connect_accepted_socket(factory, mine)

        _, self.bridge = await loop.connect_accepted_socket(
            lambda: ClientConn(
                self.relay,  # its data machine: DataChannel(--max-message)
                None,
                connect_mine,
                peer=peer,
                upstream="swtpm data fd",
            ),
            qsock,
        )

    async def _from_swtpm(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self._upstream(), 65536)
                if not data:
                    break
                await loop.sock_sendall(self.csock, data)  # forward first, unsplit
                _, events = self.machine_call(partial(self.sm.from_server, data), None)
                self._publish(events)
                for ev in events:
                    if (
                        ev.ctrl_cmd == Cmd.SET_DATAFD
                        and ev.direction is Direction.RESPONSE
                        and ev.message.raw[:4] != b"\0\0\0\0"
                        and self.bridge is not None
                    ):
                        log.warning("swtpm refused the data fd", conn=self.conn)
                        self._close_bridge()
        except OSError:
            pass
        # swtpm closed its control side (e.g. after CMD_SHUTDOWN): close QEMU's
        with contextlib.suppress(OSError):
            self.csock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """QEMU's control channel ended: close upstream control and the data bridge."""
        if self._closed:
            return
        self._closed = True
        for sock in (self.usock, self.csock):  # wakes pending reads; run() closes them
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._close_bridge()
