"""The running daemon: `Daemon` holds its listeners (one `Relay` per listen address), the
pipeline they feed, its signals, readiness (READY=1) and exit code.

A `Daemon` is made before any event loop exists (the capture worker forks then); `serve`
relays until SIGTERM/SIGINT or `stop`; `close` closes the pipeline and says how the run
ended. `run` is the whole life, as `tpmsniff --listen ...` lives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

import structlog

from .. import __version__
from ..codec.channels import CtrlChannel, DataChannel
from ..model import FrameConsumer
from ..model.exits import EXIT_CAPTURE_LOST, EXIT_OK, EXIT_STARTUP, combine
from ..pipeline.interface import FramePipeline
from ..pipeline.worker import (
    WorkerPipeline,
    WorkerStartError,
    announce_started,
    start_error_text,
)
from ..sinks.base import OptionError
from ..transport.activation import Passed, passed_sockets
from ..transport.addresses import Address, AddressError, parse_address
from ..transport.conn import ConnCounter
from ..transport.endpoints import check_unix_upstream, check_upstream
from ..transport.errors import StartupError
from ..transport.native import NativeRelay, Ordered
from ..transport.notify import notify
from ..transport.relay import Relay
from .args import build_sinks, check_sink_options, parse_auths, sink_context, sinks_wait_on_open

if TYPE_CHECKING:
    from ..codec.annotate import Annotator
    from ..pipeline.inprocess import InProcessPipeline

log = structlog.get_logger("tpmsniff")

ROLES = {"auto": "auto", "qemu": "qemu", "swtpm": "data"}  # --mode -> Relay role
# At stop, requests outstanding may get their responses: up to DRAIN_LIMIT s, looked at
# every DRAIN_POLL s (a stop with nothing outstanding does not wait at all).
DRAIN_LIMIT, DRAIN_POLL = 2.0, 0.001


def make_pipeline(args: argparse.Namespace, extra: Sequence[FrameConsumer] = ()) -> FramePipeline:
    """Decoding and sinks run in a worker process unless --in-process is given. `extra`
    sinks (the pytest plugin's collector) need --in-process to be of use. Every option
    is checked here, before the worker forks: StartupError (exit 3) if one cannot work."""
    try:
        check_sink_options(args, live=True)
        auth = parse_auths(args)
    except (OptionError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    try:
        if args.in_process:
            return _in_process(args, extra, auth)
        return WorkerPipeline(lambda: _in_process(args, extra, auth, deferred=False))
    except OSError as exc:  # an output that cannot be opened or whose header fails
        raise StartupError(start_error_text(exc)) from None


def _in_process(
    args: argparse.Namespace,
    extra: Sequence[FrameConsumer],
    auth: dict[int, bytes],
    deferred: bool = True,
) -> InProcessPipeline:
    if sinks_wait_on_open(args):
        announce_started()  # opening a named pipe waits for its reader: READY=1 first
    # with `--pcap -` standard output carries the capture: the console goes to stderr
    ctx = sink_context(args, True, sys.stdout, sys.stderr)
    sinks = [*build_sinks(args, ctx), *extra]  # first: the capture files exist with a header
    announce_started()  # (in the worker) the daemon may say READY=1 now
    from ..pipeline.inprocess import InProcessPipeline, preload

    preload()  # the decoder (tpm2-pytss: the slow import), on a thread; the first
    # message waits for it, connection records and a stop with nothing to decode do not

    def annotator() -> Annotator:
        from ..codec.annotate import Annotator

        return Annotator(auth)

    return InProcessPipeline(sinks, deferred=deferred, make_annotator=annotator)


def _addr(text: str, what: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise StartupError(f"{what}: {exc}") from None


def parse_owner(text: str) -> tuple[int, int]:
    """USER[:GROUP] -> (uid, gid); -1 keeps the current one."""
    import grp
    import pwd

    user, _, group = text.partition(":")
    try:
        uid = pwd.getpwnam(user).pw_uid if user else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as exc:
        raise StartupError(f"--listen-owner {text}: no such user or group {exc}") from None
    return uid, gid


def _main_listen(args: argparse.Namespace, passed: list[Passed]) -> Address:
    """The first main listen address: --listen, or the first socket systemd passed."""
    main = [p for p in passed if p.role != "ctrl"]
    if passed and not main:
        raise StartupError("systemd passed only a control-channel socket (named ctrl)")
    if main:
        if args.listen:
            log.info("listening on the sockets systemd passed; --listen ignored")
        return main[0].address
    if not args.listen:
        raise StartupError("--listen is required (unless systemd passes listening sockets)")
    return _addr(args.listen, "--listen")


async def _companion(
    args: argparse.Namespace, listen: Address, upstream: Address, passed: Sequence[Passed] = ()
) -> tuple[Address, Address] | None:
    """The control channel's (listen, upstream) pair, or None when there is none."""
    ctrl = [p for p in passed if p.role == "ctrl"]
    if ctrl:  # systemd passed it: relay it to --upstream-ctrl or the upstream's companion
        uc = _addr(args.upstream_ctrl, "--upstream-ctrl") if args.upstream_ctrl else None
        uc = uc or upstream.companion()
        await check_upstream(uc)
        return ctrl[0].address, uc
    if args.listen_ctrl == "none":
        return None
    lc = _addr(args.listen_ctrl, "--listen-ctrl") if args.listen_ctrl else listen.companion()
    if args.upstream_ctrl:
        uc = _addr(args.upstream_ctrl, "--upstream-ctrl")
        await check_upstream(uc)
        return lc, uc
    uc = upstream.companion()
    try:
        if uc.kind == "unix":
            check_unix_upstream(uc)
        else:
            await check_upstream(uc, timeout=1.0)
    except StartupError:
        if args.listen_ctrl:
            raise
        log.info("no upstream control channel; not relaying one", upstream_ctrl=str(uc))
        return None
    return lc, uc


class Daemon:
    """One tpmsniff relay: its listeners, the pipeline they feed, signals, readiness and
    exit code."""

    def __init__(self, args: argparse.Namespace, extra: Sequence[FrameConsumer] = ()) -> None:
        """Checks every option and starts the pipeline (forks the capture worker, so
        before any event loop). Raises StartupError."""
        self.args = args
        self.pipeline = make_pipeline(args, extra)
        self.relays: list[Relay] = []
        self.native: NativeRelay | None = None
        self.cut = asyncio.Event()  # a second one: stop now, say what was not written
        self._loop_signals: list[int] = []

    async def serve(
        self,
        stop: asyncio.Event | None = None,
        ready: Callable[[list[Relay]], None] | None = None,
    ) -> int:
        """Relay until SIGTERM/SIGINT (or `stop` is set, for in-process use); `ready` is
        called with the listeners once READY=1 is sent."""
        args = self.args
        passed = passed_sockets()  # systemd socket activation: these replace --listen
        listen = _main_listen(args, passed)
        upstream = _addr(args.upstream, "--upstream")
        owner = parse_owner(args.listen_owner) if args.listen_owner else None
        await check_upstream(upstream)
        companion = await _companion(args, listen, upstream, passed)
        pipeline = self._start_native()
        try:
            self.relays = self._listeners(pipeline, listen, upstream, owner, companion, passed)
            await self._listen()
            if stop is None:
                stop = self._signals(pipeline)
            await self._until_started(pipeline, stop)
            if stop.is_set():  # stopped before the outputs were open: never "ready"
                await self._shutdown()
                return EXIT_OK
            log.info(
                "ready",
                listen=str(listen),
                upstream=str(upstream),
                ctrl=f"{companion[0]} -> {companion[1]}" if companion else None,
                pcap=args.pcap,
                version=__version__,
            )
            notify("READY=1")
            if ready is not None:
                ready(self.relays)
            await stop.wait()
            await self._shutdown()
            return EXIT_OK
        finally:
            self._late_signals()
            if self.native is not None:
                self.native.close()  # every record it made reaches the pipeline before

    def close(self) -> int:
        """Close the pipeline: wait until every output has every record (a second
        SIGTERM/SIGINT cuts that short); its exit code (0, 1 or 4; 4 also when the native
        relay could not record messages)."""
        code = self.pipeline.close(cut=self.cut.is_set())
        lost = EXIT_CAPTURE_LOST if self.native is not None and self.native.lost else EXIT_OK
        return combine(lost, code)

    # -- the steps of serve() ------------------------------------------------------------
    def _start_native(self) -> FramePipeline:
        """The C relay for TPM data connections (--relay), and the pipeline the Python
        side then writes to: its records take the native relay's made before them."""
        args = self.args
        if args.relay != "python":
            try:
                self.native = NativeRelay(self.pipeline, args.max_message)
            except StartupError as exc:
                if args.relay == "native":
                    raise
                log.warning("relaying in Python: native relay unavailable", reason=str(exc))
        if self.native is None:
            return self.pipeline
        return cast(FramePipeline, Ordered(self.pipeline, self.native))

    def _listeners(
        self,
        pipeline: FramePipeline,
        listen: Address,
        upstream: Address,
        owner: tuple[int, int] | None,
        companion: tuple[Address, Address] | None,
        passed: Sequence[Passed] = (),
    ) -> list[Relay]:
        args = self.args
        counter = ConnCounter()  # connection numbers unique across listeners
        common: dict[str, Any] = {
            "listen_mode": args.listen_mode,
            "listen_owner": owner,
            "max_connections": args.max_connections,
        }
        main: list[Passed | None] = [p for p in passed if p.role != "ctrl"] or [None]
        relays = [
            Relay(
                p.address if p else listen,
                upstream,
                lambda: DataChannel(args.max_message),
                pipeline,
                counter,
                role=ROLES[(p.role if p else None) or args.mode],
                native=self.native,
                sock=p.sock if p else None,
                **common,
            )
            for p in main
        ]
        if companion:
            lc, uc = companion
            given = next((p.sock for p in passed if p.role == "ctrl"), None)
            relays.append(
                Relay(lc, uc, CtrlChannel, pipeline, counter, role="ctrl", sock=given, **common)
            )
        return relays

    async def _listen(self) -> None:
        try:
            for r in self.relays:
                await r.start()
        except StartupError:
            for r in self.relays:
                r.stop_accepting()
            raise

    def _signals(self, pipeline: FramePipeline) -> asyncio.Event:
        """SIGTERM/SIGINT stop (a second one cuts the stop short); SIGHUP reopens the
        capture files (logrotate `create`)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stop_signal() -> None:
            if stop.is_set():
                self.cut.set()
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_signal)
            self._loop_signals.append(sig)
        loop.add_signal_handler(signal.SIGHUP, lambda: reopen(pipeline))
        self._loop_signals.append(signal.SIGHUP)
        return stop

    def _late_signals(self) -> None:
        """The loop is about to end: from now on a SIGTERM/SIGINT means "cut the stop
        short" (the loop would leave them at their default, which kills us)."""
        if not self._loop_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in self._loop_signals:
            loop.remove_signal_handler(sig)
        self._loop_signals.clear()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.cut.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def _until_started(self, pipeline: FramePipeline, stop: asyncio.Event) -> None:
        """Relaying already; READY=1 once the capture files are open (or a stop request).
        An output that failed to open: StartupError (exit 3)."""
        starting = asyncio.ensure_future(pipeline.started())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if starting.done() and starting.exception() is not None:
            exc = starting.exception()
            for r in self.relays:
                r.stop_accepting()
                r.close_all()
            if isinstance(exc, WorkerStartError):  # an output could not be opened: exit 3
                raise StartupError(str(exc))
            raise cast(BaseException, exc)
        starting.cancel()

    async def _shutdown(self) -> None:
        """Stop accepting; requests outstanding get their responses (up to DRAIN_LIMIT,
        unless a second signal comes); then every connection is closed."""
        notify("STOPPING=1")
        log.info("stopping", busy=any(r.busy for r in self.relays))
        for r in self.relays:
            r.stop_accepting()
        loop = asyncio.get_running_loop()
        end = loop.time() + DRAIN_LIMIT
        while any(r.busy for r in self.relays) and not self.cut.is_set():
            if loop.time() >= end:
                log.warning("stopping: responses still outstanding after the drain limit")
                break
            await asyncio.sleep(DRAIN_POLL)
        for r in self.relays:
            r.close_all()
        await asyncio.sleep(0)


def reopen(pipeline: FramePipeline) -> None:
    """SIGHUP: start a new capture file at the configured path (logrotate `create`)."""
    log.info("SIGHUP: reopening capture files")
    pipeline.control("reopen")


def run(args: argparse.Namespace) -> int:
    """The daemon's whole life: start, relay until stopped, close; the exit code."""
    daemon = None
    sink_code = EXIT_OK
    try:
        daemon = Daemon(args)  # forks the worker: before any event loop exists
        code = run_loop(daemon.serve())
    except StartupError as exc:
        print(f"tpmsniff: error: {exc}", file=sys.stderr)
        code = EXIT_STARTUP
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        if daemon is not None:
            sink_code = daemon.close()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
    if code == EXIT_OK:
        code = sink_code
        log.info("stopped", exit_code=code)
    return code


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when installed (it roughly halves the relay's own overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
