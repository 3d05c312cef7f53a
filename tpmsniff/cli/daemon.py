"""Command line: `tpmsniff --listen ADDR --upstream ADDR [...]` (the running daemon:
cli/service.py; the sinks' options: each sink class, sinks/registry.py).

Exit codes (tpmsniff.model.exits, EPILOG below): 0 clean stop; 1 a live check found a
violation; 2 usage error; 3 cannot start (listen address taken or unusable, upstream
unreachable, an output that cannot be opened or started); 4 outputs lost while running.
Errors are one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .. import __version__
from ..codec.framing import DEFAULT_MAX_MESSAGE
from ..transport.relay import DEFAULT_MAX_CONNECTIONS
from .args import Parser, add_auth_arg, add_sink_options
from .logs import configure
from .service import run

# The relay process imports only what relaying needs (start-up is exec -> accepting):
# decoding (tpm2-pytss), the sinks (dpkt) and the checker are imported by the capture
# worker after it forks, or here only when an option needs them.

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
  0  stopped cleanly (SIGTERM/SIGINT; every relayed message written). A second
     SIGTERM/SIGINT cuts the stop short: one log line says how many messages were
     not written, exit 4
  1  stopped cleanly, but a live check (--secret, --sensitive, --require-encrypted) failed
  2  usage error
  3  cannot start: listen address in use or not a socket, upstream unreachable, an
     output (--pcap, --jsonl) that cannot be opened safely or whose header cannot be
     written (symlink, not a regular file, another user's file, disk full)
  4  stopped cleanly, but outputs were lost while running (capture worker died or was
     killed, disk full, write error, stop cut short): the relay went on without
     them. A violation (1)
     takes precedence, since the check that found it did run"""


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return n


MAX_MAX_MESSAGE = 1 << 24  # bounded: the C relay's records carry 32-bit lengths


def _max_message(text: str) -> int:
    """A TPM header is 10 bytes; above 16 MiB nothing real exists (swtpm's own cap is 4 KiB)."""
    n = _positive(text)
    if not 10 <= n <= MAX_MAX_MESSAGE:
        raise argparse.ArgumentTypeError(f"--max-message must be 10..{MAX_MAX_MESSAGE}: {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="tpmsniff",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tpmsniff {__version__}")
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="where clients connect (not needed when systemd passes listening sockets: "
        "socket activation, LISTEN_FDS; docs/deploy.md)",
    )
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
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="format of log events on stderr (default: console)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument(
        "--max-message",
        type=_max_message,
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
        default="auto",
        help="TPM data-channel hot path, also for the data channel QEMU hands over: auto "
        "(default): native when it loads, else python with one warning; native (a small C "
        "epoll thread built by `pip install`/`make venv`: less latency than socat; exit 3 "
        "if it cannot load); python (asyncio). Control channels are relayed in Python",
    )
    add_auth_arg(p)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="decode and write outputs in the relay process (default: a worker process, "
        "so the relay never waits on them)",
    )
    add_sink_options(p, live=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """The `tpmsniff` command. Run as the program (argv None), the daemon leaves with
    os._exit once everything is written and closed: the interpreter's own teardown
    (tens of ms) would only delay the exit a service manager waits for."""
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "extcap":
        configure("console", "warning")
        from . import extcap

        return extcap.main(argv[1:])
    if argv and argv[0] in ("check", "decode"):
        configure("console", "warning")
        if argv[0] == "check":
            from . import check

            return check.main(argv[1:])
        from . import decode

        return decode.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.listen and not os.environ.get("LISTEN_FDS"):
        parser.error("--listen is required (unless systemd passes listening sockets)")
    configure(args.log_format, args.log_level)
    code = run(args)
    if as_program:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code
