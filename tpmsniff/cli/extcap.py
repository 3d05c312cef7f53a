"""`tpmsniff extcap`: Wireshark's extcap interface (https://www.wireshark.org/docs/man-pages/extcap.html).

Interfaces: one per running daemon with --pcap-tee (found through the files they write in
sinks/tee.py's registry_dir()), and "tpmsniff-proxy", which starts a daemon with the
listen/upstream fields of its config dialog. Capturing copies the daemon's live pcapng
stream into Wireshark's fifo. `tpmsniff extcap --install` puts a launcher into the extcap
folder of the installed Wireshark (root: the global folder; else the personal one, which
moved in 4.2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable

from .. import __version__
from ..sinks.tee import registry_dir

PROXY = "tpmsniff-proxy"
PREFIX = "tpmsniff-"
LAUNCHER = "tpmsniff-extcap"


def daemons() -> dict[str, str]:
    """interface value -> tee socket path, for every registered daemon whose socket is
    there (a stale entry of a killed daemon is skipped)."""
    out: dict[str, str] = {}
    folder = registry_dir()
    try:
        if not _mine(os.lstat(folder), stat.S_ISDIR):  # another user's folder: not ours
            return out
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if not name.startswith("tee-"):
            continue
        entry = os.path.join(folder, name)
        try:
            if not _mine(os.lstat(entry), stat.S_ISREG):
                continue
            with open(entry, encoding="utf-8") as fh:
                path = fh.readline().strip()
        except OSError:
            continue
        if path and _alive(name[4:], path):
            out[PREFIX + name[4:]] = path
    return out


def _mine(st: os.stat_result, kind: Callable[[int], bool]) -> bool:
    """Our own directory or file (never another user's, never a symlink)."""
    return kind(st.st_mode) and st.st_uid == os.geteuid()


def _alive(pid: str, path: str) -> bool:
    """Its process runs and its socket is there (no probe connection: the daemon would
    count it as a reader)."""
    try:
        if pid.isdigit():
            os.kill(int(pid), 0)
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except PermissionError:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def interfaces() -> str:
    lines = [f"extcap {{version={__version__}}}{{help=https://github.com/tpmsniff}}"]
    for value, path in daemons().items():
        lines.append(f"interface {{value={value}}}{{display=tpmsniff daemon ({path})}}")
    lines.append(f"interface {{value={PROXY}}}{{display=tpmsniff: start a TPM proxy}}")
    return "\n".join(lines) + "\n"


def dlts(iface: str) -> str:
    return f"dlt {{number=1}}{{name={iface}}}{{display=Ethernet (tpmsniff synthetic TCP)}}\n"


def config(iface: str) -> str:
    if iface != PROXY:
        return ""
    return (
        "arg {number=0}{call=--listen}{display=Listen}{type=string}{required=true}"
        "{tooltip=where the TPM client connects: PATH or tcp:HOST:PORT}"
        "{placeholder=tcp:127.0.0.1:3321}\n"
        "arg {number=1}{call=--upstream}{display=Upstream (swtpm)}{type=string}"
        "{required=true}{tooltip=swtpm's socket: --ctrl for QEMU, --server for data clients}"
        "{placeholder=tcp:127.0.0.1:2321}\n"
        "arg {number=2}{call=--mode}{display=Mode}{type=selector}"
        "{tooltip=what connects to Listen}\n"
        "value {arg=2}{value=auto}{display=auto (detect)}{default=true}\n"
        "value {arg=2}{value=qemu}{display=QEMU -tpmdev emulator}\n"
        "value {arg=2}{value=swtpm}{display=TPM data channel (tpm2-tools, TSS)}\n"
    )


def capture(args: argparse.Namespace) -> int:
    if not args.fifo:
        print("tpmsniff extcap: --capture needs --fifo", file=sys.stderr)
        return 2
    if args.extcap_interface == PROXY:
        if not args.listen or not args.upstream:
            print("tpmsniff extcap: the proxy needs Listen and Upstream", file=sys.stderr)
            return 2
        cmd = [sys.executable, "-m", "tpmsniff", "--listen", args.listen]
        cmd += ["--upstream", args.upstream, "--mode", args.mode, "--pcap", args.fifo]
        try:
            os.execv(sys.executable, [*cmd, "--console", "none"])  # the fifo is its capture
        except OSError as exc:
            print(f"tpmsniff extcap: cannot start the proxy: {exc}", file=sys.stderr)
            return 1
    path = daemons().get(args.extcap_interface or "")
    if path is None:
        print(f"tpmsniff extcap: no running daemon {args.extcap_interface}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        return _copy(path, args.fifo)
    except BrokenPipeError:  # Wireshark stopped the capture
        return 0
    except OSError as exc:
        print(f"tpmsniff extcap: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _copy(path: str, fifo: str) -> int:
    """The daemon's stream into Wireshark's fifo, as it comes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        fd = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def install_folder(user: bool = False) -> str:
    """The extcap folder of the installed Wireshark: the global one as root; else the
    personal one, ~/.local/lib/wireshark/extcap from 4.2 on, $XDG_CONFIG_HOME/wireshark/
    extcap before (Debian 12 ships 4.0)."""
    tshark = shutil.which("tshark") or shutil.which("wireshark")
    version = (4, 2)
    folders = ""
    if tshark:
        out = subprocess.run([tshark, "--version"], capture_output=True, text=True, timeout=30)
        m = re.search(r"(\d+)\.(\d+)\.\d+", out.stdout)
        if m:
            version = (int(m.group(1)), int(m.group(2)))
        if os.geteuid() == 0 and not user:
            g = subprocess.run(
                [tshark, "-G", "folders"], capture_output=True, text=True, timeout=30
            )
            folders = g.stdout
    if folders:
        for line in folders.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Extcap path", "Global Extcap path"):
                return value.strip()
    home = os.path.expanduser("~")
    if version < (4, 2):
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        return os.path.join(base, "wireshark", "extcap")
    return os.path.join(home, ".local", "lib", "wireshark", "extcap")


def install(user: bool) -> int:
    """Put the launcher into Wireshark's extcap folder: one line and exit 3 on any error;
    a file there that is not our launcher (or a symlink) is never replaced."""
    try:
        folder = install_folder(user)
        os.makedirs(folder, exist_ok=True)
        dest = os.path.join(folder, LAUNCHER)
        if os.path.lexists(dest) and (os.path.islink(dest) or not _ours(dest)):
            print(
                f"tpmsniff extcap: {dest}: not a tpmsniff launcher; not replacing it",
                file=sys.stderr,
            )
            return 3
        text = f'#!/bin/sh\nexec {sys.executable} -m tpmsniff extcap "$@"\n'
        tmp = f"{dest}.{os.getpid()}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o755)  # Wireshark runs it, possibly as another user
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"tpmsniff extcap: cannot install the launcher: {exc}", file=sys.stderr)
        return 3
    print(dest)
    return 0


def _ours(path: str) -> bool:
    """A regular file we own whose text is a tpmsniff launcher (safe to update)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > 4096:
        return False
    with open(path, "rb") as fh:
        return b"-m tpmsniff extcap" in fh.read()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpmsniff extcap",
        description="Wireshark extcap program: one interface per running tpmsniff daemon "
        "with --pcap-tee, and one that starts a proxy. `--install` puts it into Wireshark's "
        "extcap folder.",
    )
    p.add_argument("--install", action="store_true", help="install the extcap launcher")
    p.add_argument(
        "--user", action="store_true", help="with --install: the personal folder, even as root"
    )
    p.add_argument(
        "--extcap-interfaces", action="store_true", help="list the interfaces (Wireshark calls it)"
    )
    p.add_argument("--extcap-dlts", action="store_true", help="list an interface's link types")
    p.add_argument("--extcap-config", action="store_true", help="list an interface's config fields")
    p.add_argument("--extcap-interface", help="the interface Wireshark means")
    p.add_argument("--extcap-version")
    p.add_argument("--extcap-capture-filter")
    p.add_argument(
        "--capture", action="store_true", help="capture from --extcap-interface into --fifo"
    )
    p.add_argument("--fifo", help="the pipe Wireshark reads")
    p.add_argument("--listen", help="proxy: where the TPM client connects")
    p.add_argument("--upstream", help="proxy: swtpm's socket")
    p.add_argument("--mode", choices=("auto", "qemu", "swtpm"), default="auto")
    return p


def main(argv: list[str]) -> int:
    args, _unknown = build_parser().parse_known_args(argv)  # newer Wireshark adds options
    if args.install:
        return install(args.user)
    if args.extcap_interfaces:
        sys.stdout.write(interfaces())
        return 0
    if args.extcap_dlts:
        sys.stdout.write(dlts(args.extcap_interface or PROXY))
        return 0
    if args.extcap_config:
        sys.stdout.write(config(args.extcap_interface or ""))
        return 0
    if args.capture:
        return capture(args)
    build_parser().print_usage(sys.stderr)
    return 2
