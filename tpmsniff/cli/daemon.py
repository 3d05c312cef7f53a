"""Command line: `tpmsniff --listen ADDR --upstream ADDR [...]`.

Exit codes (tpmsniff.model.exits, EPILOG below): 0 clean stop; 1 a live check found a
violation; 2 usage error; 3 cannot start (listen address taken or unusable, upstream
unreachable, an output that cannot be opened or started); 4 outputs lost while running.
Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import structlog

from .. import __version__
from ..codec.channels import CtrlChannel, DataChannel
from ..codec.framing import DEFAULT_MAX_MESSAGE
from ..model import FrameConsumer
from ..model.exits import EXIT_OK, EXIT_STARTUP, EXIT_USAGE
from ..pipeline.interface import FramePipeline
from ..pipeline.worker import (
    WorkerPipeline,
    WorkerStartError,
    announce_started,
    start_error_text,
)
from ..safefile import STDOUT, describe, is_stream, open_private
from ..transport.addresses import Address, AddressError, parse_address
from ..transport.conn import ConnCounter
from ..transport.endpoints import check_unix_upstream, check_upstream
from ..transport.errors import StartupError
from ..transport.native import NativeRelay, Ordered
from ..transport.notify import notify
from ..transport.relay import DEFAULT_MAX_CONNECTIONS, Relay
from .args import add_secret_args, build_checker, checker_wanted
from .logs import configure

if TYPE_CHECKING:
    from ..pipeline.inprocess import InProcessPipeline

# The relay process imports only what relaying needs (start-up is exec -> accepting):
# decoding (tpm2-pytss), the sinks (dpkt) and the checker are imported by the capture
# worker after it forks, or here only when an option needs them.

log = structlog.get_logger("tpmsniff")

DESCRIPTION = """\
Relay a TPM client to swtpm, unchanged, while decoding every TPM 2.0 command and
response: QEMU's -tpmdev emulator (its control channel, with the data channel's fd
substituted), tpm2-tools or any TSS through the swtpm TCTI, or a raw (or MS-simulator
framed) client.

ADDR is PATH or unix:PATH (Unix stream socket), or tcp:HOST:PORT or HOST:PORT (TCP).
The swtpm TCTI opens its control channel at PORT+1 or PATH.ctrl; tpmsniff listens there
too and relays to the upstream's companion when that exists at start-up.

Offline: `tpmsniff decode INPUT...` and `tpmsniff check INPUT... --secret ...`
(see `tpmsniff decode --help`, `tpmsniff check --help`)."""

EPILOG = """\
examples:
  swtpm socket --tpm2 --server type=tcp,port=2321 --ctrl type=tcp,port=2322 \\
        --flags not-need-init,startup-clear &
  tpmsniff --listen tcp:127.0.0.1:3321 --upstream tcp:127.0.0.1:2321 --pcap out.pcapng
  TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=3321 tpm2_getrandom 8

exit codes:
  0  stopped cleanly (SIGTERM/SIGINT)
  1  stopped cleanly, but a live check (--secret, --sensitive, --require-encrypted) failed
  2  usage error
  3  cannot start: listen address in use or not a socket, upstream unreachable, an
     output (--pcap, --jsonl) that cannot be opened safely or whose header cannot be
     written (symlink, not a regular file, another user's file, disk full)
  4  stopped cleanly, but outputs were lost while running (capture worker died or was
     killed, disk full, write error): the relay went on without them. A violation (1)
     takes precedence, since the check that found it did run"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        self.exit(EXIT_USAGE, f"tpmsniff: error: {message}\n")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tpmsniff",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tpmsniff {__version__}")
    p.add_argument("--listen", required=True, metavar="ADDR", help="where clients connect")
    p.add_argument(
        "--upstream",
        required=True,
        metavar="ADDR",
        help="swtpm's socket: --ctrl for QEMU, --server for data clients",
    )
    p.add_argument(
        "--listen-ctrl",
        metavar="ADDR|none",
        help="control-channel listen address (default: companion of --listen, "
        "if the upstream companion exists)",
    )
    p.add_argument(
        "--upstream-ctrl",
        metavar="ADDR",
        help="upstream control address (default: companion of --upstream)",
    )
    p.add_argument(
        "--pcap",
        metavar="FILE",
        help="write an annotated pcapng (mode 0600); `-` streams it to standard output (the "
        "console then goes to stderr) and a named pipe gets it message by message, e.g. "
        "for `wireshark -k -i -`",
    )
    p.add_argument("--jsonl", metavar="FILE", help="write one JSON object per message")
    p.add_argument(
        "--console",
        choices=("hexdump", "summary", "tree", "none"),
        default="hexdump",
        help="console output: hexdump, summary (one line per message), tree (every "
        "field with its offset) or none (default: hexdump)",
    )
    p.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="format of log events on stderr (default: console)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument(
        "--max-message",
        type=int,
        default=DEFAULT_MAX_MESSAGE,
        metavar="N",
        help="largest TPM message framed, excluding MS-sim prefix (default: 4096); "
        "larger ones are relayed unframed",
    )
    p.add_argument(
        "--listen-mode",
        type=lambda s: int(s, 8),
        metavar="OCTAL",
        help="permissions of Unix listen sockets, e.g. 0660",
    )
    p.add_argument(
        "--max-connections",
        type=_positive,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="concurrent clients per listen address (default: "
        f"{DEFAULT_MAX_CONNECTIONS}); beyond it a new connection is closed at once",
    )
    p.add_argument(
        "--pcap-rotate",
        metavar="size=N[K|M|G][,count=N]",
        help="ring buffer like dumpcap -b: a new file every N bytes, keeping at most count "
        "files named FILE_NNNNN_YYYYmmddHHMMSS.pcapng",
    )
    p.add_argument(
        "--listen-owner",
        metavar="USER[:GROUP]",
        help="owner of Unix listen sockets (e.g. so a QEMU running as another user can connect)",
    )
    p.add_argument(
        "--mode",
        choices=("auto", "qemu", "swtpm"),
        default="auto",
        help="what connects to --listen: auto (detect per connection, default), qemu "
        "(QEMU -tpmdev emulator control channel; --upstream is swtpm's --ctrl socket) or "
        "swtpm (TPM data channel; --upstream is swtpm's --server socket)",
    )
    p.add_argument(
        "--relay",
        choices=("auto", "native", "python"),
        default="python",
        help="TPM data-channel hot path: python (asyncio; default), native (a small C epoll "
        "thread built by `make venv`: less latency than socat; opt-in while it is new, "
        "docs/performance.md), or auto: native when it is built, else python with a "
        "warning. Control channels and QEMU's are relayed in Python either way",
    )
    add_secret_args(p)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="decode and write outputs in the relay process (default: a worker process, "
        "so the relay never waits on them)",
    )
    return p


def _addr(text: str, what: str) -> Address:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise StartupError(f"{what}: {exc}") from None


async def _companion(
    args: argparse.Namespace, listen: Address, upstream: Address
) -> tuple[Address, Address] | None:
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


def check_outputs(args: argparse.Namespace) -> None:
    """Fail at start (exit 3) if an output file cannot be created, before forking."""
    if args.pcap_rotate:
        if not args.pcap:
            raise StartupError("--pcap-rotate needs --pcap")
        if is_stream(args.pcap):
            raise StartupError("--pcap-rotate needs a file, not a pipe or standard output")
        from ..sinks.pcapng import parse_rotate

        try:
            parse_rotate(args.pcap_rotate)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        folder = os.path.dirname(os.path.abspath(args.pcap))
        if not os.access(folder, os.W_OK):
            raise StartupError(f"capture directory {folder}: not writable")
        return  # the ring's files are named from --pcap
    for path in (args.pcap, args.jsonl):
        if path and path == args.pcap and is_stream(path):
            continue  # `-` or a named pipe: opened by the sink (a pipe waits for its reader)
        if path:  # the same checks the sink makes, without truncating anything yet
            try:
                os.close(open_private(path, append=True))
            except OSError as exc:
                raise StartupError(f"capture {describe(path, exc)}") from None


def make_sinks(args: argparse.Namespace) -> list[FrameConsumer]:
    from ..sinks.check import CheckSink
    from ..sinks.console import ConsoleSink
    from ..sinks.jsonl import JsonlSink
    from ..sinks.pcapng import PcapngSink, parse_rotate

    sinks: list[FrameConsumer] = []
    console = None
    if args.console != "none":
        # with `--pcap -` standard output carries the capture: the console goes to stderr
        console = ConsoleSink(args.console, sys.stderr if args.pcap == STDOUT else None)
        sinks.append(console)
    if args.pcap:
        sinks.append(
            PcapngSink(args.pcap, parse_rotate(args.pcap_rotate) if args.pcap_rotate else None)
        )
    if args.jsonl:
        sinks.append(JsonlSink(args.jsonl))
    if checker_wanted(args):
        checker, _ = build_checker(args)
        sinks.append(CheckSink(checker, console.out if console is not None else None))
    return sinks


def make_pipeline(args: argparse.Namespace, extra: Sequence[FrameConsumer] = ()) -> FramePipeline:
    """Decoding and sinks run in a worker process unless --in-process is given. `extra`
    sinks (the pytest plugin's collector) need --in-process to be of use."""
    auth: dict[int, bytes] = {}
    if checker_wanted(args) or args.auth:  # the checker imports the decoder: only if asked
        try:
            _, auth = build_checker(args)  # validate --secret*/--auth before forking
        except ValueError as exc:
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
    **kw: bool,
) -> InProcessPipeline:
    if args.pcap and is_stream(args.pcap):
        announce_started()  # opening a named pipe waits for its reader: READY=1 first
    sinks = [*make_sinks(args), *extra]  # first: the capture files exist with a header
    announce_started()  # (in the worker) the daemon may say READY=1 now
    from ..codec.annotate import Annotator  # then the decoder (tpm2-pytss: the slow import)
    from ..pipeline.inprocess import InProcessPipeline

    return InProcessPipeline(sinks, Annotator(auth), **kw)


def reopen(pipeline: FramePipeline) -> None:
    """SIGHUP: start a new capture file at the configured path (logrotate `create`)."""
    log.info("SIGHUP: reopening capture files")
    pipeline.control("reopen")


async def serve(
    args: argparse.Namespace,
    pipeline: FramePipeline,
    stop: asyncio.Event | None = None,
    ready: Callable[[list[Relay]], None] | None = None,
) -> int:
    """Run the relays until SIGTERM/SIGINT (or `stop` is set, for in-process use)."""
    listen = _addr(args.listen, "--listen")
    upstream = _addr(args.upstream, "--upstream")
    owner = parse_owner(args.listen_owner) if args.listen_owner else None
    await check_upstream(upstream)
    companion = await _companion(args, listen, upstream)
    counter = ConnCounter()
    native = None
    if args.relay != "python":
        try:
            native = NativeRelay(pipeline, args.max_message)
        except StartupError as exc:
            if args.relay == "native":
                raise
            log.warning("relaying in Python: native relay unavailable", reason=str(exc))
    if native is not None:  # Python's records take the native relay's made before them
        pipeline = cast(FramePipeline, Ordered(pipeline, native))
    try:
        return await _serve(
            args, pipeline, stop, ready, listen, upstream, owner, companion, counter, native
        )
    finally:
        if native is not None:
            native.close()  # every record it made reaches the pipeline before close()


async def _serve(
    args: argparse.Namespace,
    pipeline: FramePipeline,
    stop: asyncio.Event | None,
    ready: Callable[[list[Relay]], None] | None,
    listen: Address,
    upstream: Address,
    owner: tuple[int, int] | None,
    companion: tuple[Address, Address] | None,
    counter: ConnCounter,
    native: NativeRelay | None,
) -> int:
    relays = [
        Relay(
            listen,
            upstream,
            lambda: DataChannel(args.max_message),
            pipeline,
            counter,
            role={"auto": "auto", "qemu": "qemu", "swtpm": "data"}[args.mode],
            listen_mode=args.listen_mode,
            listen_owner=owner,
            max_connections=args.max_connections,
            native=native,
        )
    ]
    if companion:
        relays.append(
            Relay(
                companion[0],
                companion[1],
                CtrlChannel,
                pipeline,
                counter,
                role="ctrl",
                listen_mode=args.listen_mode,
                listen_owner=owner,
                max_connections=args.max_connections,
            )
        )
    try:
        for r in relays:
            await r.start()
    except StartupError:
        for r in relays:
            r.stop_accepting()
        raise
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: reopen(pipeline))
    # relaying already; READY=1 once the capture files are open (or a stop request)
    starting = asyncio.ensure_future(pipeline.started())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done() and starting.exception() is not None:
        exc = starting.exception()
        for r in relays:
            r.stop_accepting()
            r.close_all()
        if isinstance(exc, WorkerStartError):  # an output could not be opened: exit 3
            raise StartupError(str(exc))
        raise cast(BaseException, exc)
    starting.cancel()
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
        ready(relays)
    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping", busy=any(r.busy for r in relays))
    for r in relays:
        r.stop_accepting()
    for _ in range(40):  # let in-flight request/response pairs finish (<= 2 s)
        if not any(r.busy for r in relays):
            break
        await asyncio.sleep(0.05)
    for r in relays:
        r.close_all()
    await asyncio.sleep(0)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("check", "decode"):
        configure("console", "warning")
        if argv[0] == "check":
            from . import check

            return check.main(argv[1:])
        from . import decode

        return decode.main(argv[1:])
    args = build_parser().parse_args(argv)
    configure(args.log_format, args.log_level)
    pipeline = None
    sink_code = 0
    try:
        check_outputs(args)
        pipeline = make_pipeline(args)  # forks the worker: before any event loop exists
        code = run_loop(serve(args, pipeline))
    except StartupError as exc:
        print(f"tpmsniff: error: {exc}", file=sys.stderr)
        code = EXIT_STARTUP
    except KeyboardInterrupt:
        code = EXIT_OK
    finally:
        if pipeline is not None:
            sink_code = pipeline.close()
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
