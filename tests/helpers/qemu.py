"""QEMU booting SeaBIOS through tpmsniff, in front of a swtpm with only a control socket
(as libvirt and Proxmox run it)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import Sniff, require, wait_for

from helpers.captured import messages
from tpmsniff.inputs.swtpmlog import parse_file
from tpmsniff.model import CTRL_PORT


class CtrlSwtpm:
    """swtpm with only a Unix control socket (QEMU hands it the data fd)."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        self.sock = str(d / "swtpm.sock")
        self.log = d / "swtpm.log"
        self.proc = subprocess.Popen(
            [
                require("swtpm"),
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={d / 'state'}",
                "--ctrl",
                f"type=unixio,path={self.sock}",
                "--log",
                f"file={self.log},level=2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: Path(self.sock).exists(), 10, "swtpm ctrl socket")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_idle_after_boots(console: Path, boots: int, timeout: float = 60) -> None:
    """Wait for `boots` machine resets (CMD_INIT) and then for SeaBIOS's idle pause
    ("retrying in 1 second"): QEMU killed in the middle of a TPM command does not send
    CMD_SHUTDOWN, so a test stops it only while the TPM is idle."""
    end = time.monotonic() + timeout
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < end:
        text = console.read_text() if console.exists() else ""
        if len(text) != last:
            last, quiet_since = len(text), time.monotonic()
        elif text.count("ctrl cmd CMD_INIT") >= boots and time.monotonic() - quiet_since > 0.4:
            return
        time.sleep(0.05)
    raise TimeoutError(f"no {boots} quiet SeaBIOS boots within {timeout}s")


def qemu_args(sock: str, device: str = "tpm-tis") -> list[str]:
    """SeaBIOS, no disk, no NIC, rebooting every second (docs/protocols.md §10)."""
    return [
        require("qemu-system-x86_64"),
        *("-machine", "pc", "-accel", "tcg", "-m", "128", "-nic", "none"),
        *("-boot", "reboot-timeout=1000"),
        *("-chardev", f"socket,id=chrtpm,path={sock}"),
        *("-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", f"{device},tpmdev=tpm0"),
    ]


def boot(sniff: Sniff, device: str = "tpm-tis", boots: int = 3) -> str:
    """Boot SeaBIOS `boots` times, then SIGTERM while the TPM is idle."""
    p = subprocess.Popen(
        [*qemu_args(sniff.listen, device), "-nographic"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    before = sniff.console().count("ctrl cmd CMD_INIT")
    try:
        wait_idle_after_boots(sniff.stdout, before + boots)
    finally:
        p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    return out.decode(errors="replace")


def logged(log: Path, kinds: tuple[str, str]) -> list[tuple[bool, bytes]]:
    return [(m.kind == kinds[0], m.data) for m in parse_file(str(log)) if m.kind in kinds]


def assert_capture_matches_log(sniff: Sniff, logs: list[Path]) -> int:
    tpm_log = [x for log in logs for x in logged(log, ("tpm-cmd", "tpm-rsp"))]
    ctrl_log = [x for log in logs for x in logged(log, ("ctrl-cmd", "ctrl-rsp"))]
    cap = messages(str(sniff.pcap))
    assert cap == tpm_log
    assert messages(str(sniff.pcap), port=CTRL_PORT) == ctrl_log
    return sum(1 for to_tpm, _ in cap if to_tpm)
