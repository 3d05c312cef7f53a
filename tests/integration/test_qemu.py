"""QEMU (SeaBIOS) through tpmsniff in front of a ctrl-only swtpm, as libvirt/Proxmox run it.

Ground truth is swtpm's `--log level=2`: every TPM message in the capture equals its
SWTPM_IO dumps, and every control message its `Ctrl Cmd`/`Ctrl Rsp` dumps, in order.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import start_sniff, wait_for
from helpers.captured import messages
from helpers.fieldcheck import check_capture
from helpers.qemu import (
    CtrlSwtpm,
    assert_capture_matches_log,
    boot,
    qemu_args,
    wait_idle_after_boots,
)

from tpmsniff.inputs.pcapng import read_pcapng
from tpmsniff.inputs.swtpmlog import parse_file
from tpmsniff.model import CTRL_PORT

pytestmark = pytest.mark.integration


@pytest.fixture(params=["native", "python"])
def vm(request, tmp_path):
    """QEMU's handed-over data channel (CMD_SET_DATAFD) on both relay paths."""
    sw = CtrlSwtpm(tmp_path / "swtpm")
    extra = ["--console", "summary", "--relay", request.param]
    sniff = start_sniff(tmp_path, sw.sock, extra=extra)
    yield sw, sniff, tmp_path
    sniff.stop()
    sw.stop()


@pytest.mark.parametrize("device,bufsize", [("tpm-tis", 4096), ("tpm-crb", 3968)])
def test_seabios_boot_loop_matches_swtpm_log(vm, device, bufsize):
    sw, sniff, _ = vm
    boot(sniff, device, boots=4)
    sw.proc.wait(10)  # CMD_SHUTDOWN made swtpm exit
    assert sniff.proc.poll() is None, "tpmsniff keeps listening after the VM is gone"
    sniff.stop()
    n_cmds = assert_capture_matches_log(sniff, [sw.log])
    text = sniff.console()
    boots = text.count("ctrl cmd CMD_INIT")
    assert boots >= 2, "several reboot cycles"
    assert f"CMD_SET_BUFFERSIZE buffersize={bufsize}" in text
    assert "cmd PCR_Extend loc=0" in text and "CMD_SHUTDOWN" in text
    comments = [p.comment for p in read_pcapng(str(sniff.pcap))]
    assert any("ctrl cmd CMD_SET_DATAFD" in c for c in comments)
    counts = check_capture(str(sniff.pcap))  # firmware traffic decodes field by field, exactly
    assert counts["errors"] == counts["header_only"] == 0
    print(f"{device}: {boots} boots, {n_cmds} TPM commands, {n_cmds / boots:.1f} per boot")


def test_two_vm_starts_through_one_daemon(vm):
    sw, sniff, tmp = vm
    boot(sniff, boots=1)
    sw.proc.wait(10)
    sw2 = CtrlSwtpm(tmp / "swtpm")  # a new swtpm at the same path, as a VM restart does
    try:
        out = boot(sniff, boots=1)
        assert "is not emulating TPM device" not in out
        sw2.proc.wait(10)
    finally:
        sw2.stop()
    sniff.stop()
    # the one log file holds both swtpm runs (swtpm appends)
    assert_capture_matches_log(sniff, [sw2.log])
    assert sniff.console().count("ctrl cmd CMD_SET_DATAFD") == 2


def test_garbage_and_eof_on_control_socket(vm):
    sw, sniff, _ = vm
    with socket.socket(socket.AF_UNIX) as s:  # garbage
        s.connect(sniff.listen)
        s.sendall(b"\x00\x00\x00\x99garbage")
        s.settimeout(3)
        with contextlib.suppress(TimeoutError):
            s.recv(64)
    with socket.socket(socket.AF_UNIX) as s:  # premature EOF in a control request
        s.connect(sniff.listen)
        s.sendall(b"\x00\x00\x00\x0c\x00\x00")
    boot(sniff, boots=1)  # the next client is served
    sw.proc.wait(10)
    assert sniff.proc.poll() is None
    sniff.stop()
    assert "cmd PCR_Extend" in sniff.console()


class Monitor:
    def __init__(self, path: str) -> None:
        def connected() -> bool:  # the path exists a moment before QEMU listens on it
            self.s = socket.socket(socket.AF_UNIX)
            if self.s.connect_ex(path) == 0:
                return True
            self.s.close()
            return False

        wait_for(connected, 20, "QEMU monitor")
        self.s.settimeout(10)
        self._read_until(b"(qemu) ")

    def _read_until(self, marker: bytes) -> bytes:
        buf = b""
        while marker not in buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf

    def cmd(self, line: str) -> str:
        self.s.sendall(line.encode() + b"\n")
        return self._read_until(b"(qemu) ").decode(errors="replace")


def qemu_vm(sniff_sock: str, mon: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *qemu_args(sniff_sock),
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            f"unix:{mon},server,nowait",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def ctrl_messages_match(cap: list[tuple[bool, bytes]], log: Path) -> None:
    """Compare with swtpm 0.7.1's control log, which dumps SET_STATEBLOB requests as
    `length 1024` (its first 1024 bytes) and does not log SET_STATEBLOB replies."""
    msgs = [m for m in parse_file(str(log)) if m.kind in ("ctrl-cmd", "ctrl-rsp")]
    expect: list[tuple[bool, bytes]] = []
    last_cmd = b""
    for to_tpm, data in cap:
        if not to_tpm and last_cmd[:4] == b"\0\0\0\x0d":
            continue  # not logged by swtpm
        if to_tpm:
            last_cmd = data
        expect.append((to_tpm, data))
    assert len(expect) == len(msgs)
    for (to_tpm, data), m in zip(expect, msgs, strict=True):
        assert to_tpm == (m.kind == "ctrl-cmd")
        if data[:4] == b"\0\0\0\x0d" and to_tpm:
            assert m.length == min(len(data), 1024) and data[: len(m.data)] == m.data
        else:
            assert m.data == data


def test_migration_out_and_in_through_tpmsniff(vm):
    sw, sniff, tmp = vm
    state = tmp / "vm.migration"
    src = qemu_vm(sniff.listen, str(tmp / "mon-src"))
    mon = Monitor(str(tmp / "mon-src"))
    wait_idle_after_boots(sniff.stdout, 1)  # SeaBIOS measured things into the TPM
    mon.cmd(f'migrate "exec:cat > {state}"')
    wait_for(lambda: "completed" in mon.cmd("info migrate"), 60, "migration out")
    mon.cmd("quit")
    src.wait(30)
    sw.proc.wait(10)
    sw_log_out = sw.log.read_text()

    sw2 = CtrlSwtpm(tmp / "swtpm2")  # the destination's swtpm (empty state)
    sniff.stop()
    sniff2 = start_sniff(tmp, sw2.sock, extra=["--console", "summary"], name="sniff2")
    try:
        dst = qemu_vm(sniff2.listen, str(tmp / "mon-dst"), "-incoming", f"exec:cat {state}")
        mon2 = Monitor(str(tmp / "mon-dst"))
        wait_for(lambda: "running" in mon2.cmd("info status"), 60, "destination running")
        # the guest goes on (and reboots): wait for TPM commands on the new swtpm, then for
        # a quiet moment (QEMU quit mid-command would send no CMD_SHUTDOWN)
        wait_for(
            lambda: "cmd PCR_Extend" in sniff2.console() or "cmd Startup" in sniff2.console(),
            60,
            "TPM commands after migration",
        )
        wait_idle_after_boots(sniff2.stdout, 1)
        mon2.cmd("quit")
        out = dst.communicate(timeout=30)[0].decode(errors="replace")
        sw2.proc.wait(10)
    finally:
        sniff2.stop()
        sw2.stop()
    assert "error" not in out.lower(), out

    def blobs(pcap: Path, direction: bool) -> list[bytes]:
        return [m for d, m in messages(str(pcap), port=CTRL_PORT) if d == direction]

    got = {m[4 + 4 : 4 + 8]: m for m in blobs(sniff.pcap, False) if len(m) > 16}
    sent = [m for m in blobs(sniff2.pcap, True) if m[:4] == b"\x00\x00\x00\x0d"]
    # every state blob swtpm gave out (permanent, volatile) went back in unchanged
    out_blobs = sorted(m[16:] for m in got.values())
    in_blobs = sorted(m[16:] for m in sent)
    assert len(in_blobs) == 2 and in_blobs == out_blobs
    text = sniff2.console()
    assert text.count("ctrl rsp CMD_SET_STATEBLOB result=0x0") == 2
    assert "CMD_INIT flags=0x1 delete_volatile=True" in text
    assert "cmd PCR_Extend" in text or "cmd Startup" in text  # the TPM serves after migration
    ctrl_messages_match(messages(str(sniff2.pcap), port=CTRL_PORT), sw2.log)
    assert "GET_STATEBLOB" in sniff.console() and "Ctrl Cmd" in sw_log_out
