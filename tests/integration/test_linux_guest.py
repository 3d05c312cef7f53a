"""Issue 19.5: a real Linux guest (Debian's 6.12 kernel, TCG) whose TPM goes through
tpmsniff in QEMU mode. Inside the guest, the host's own busybox and tpm2-tools find
/dev/tpm0 and /dev/tpmrm0 and seal/unseal through the kernel resource manager; outside,
every TPM and control message in the capture equals swtpm's `--log level=2`, and
`tpmsniff check` grades the guest's sessions although the resource manager context-saves
and reloads objects and sessions around every command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import require, start_sniff
from helpers.linux_guest import build_initramfs, kernel, kernel_config
from helpers.qemu import CtrlSwtpm, assert_capture_matches_log

from tpmsniff.inputs.pcapng import read_pcapng

pytestmark = pytest.mark.integration

SECRET = "guest-sealed-secret-0123456789"
TOOLS = ("tpm2", "tpm2_createprimary", "tpm2_create", "tpm2_load", "tpm2_unseal")
TOOLS += ("tpm2_startauthsession", "tpm2_flushcontext", "tpm2_getcap")

INIT = f"""#!/usr/bin/busybox sh
/usr/bin/busybox --install -s
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "GUEST: devices $(ls /dev/tpm0 /dev/tpmrm0 | tr '\\n' ' ')"
export TPM2TOOLS_TCTI=device:/dev/tpmrm0
cd /tmp
run() {{ "$@" > /tmp/out 2>&1; rc=$?; echo "GUEST: rc=$rc $1"; [ $rc = 0 ] || cat /tmp/out; }}
run tpm2_createprimary -Q -C o -c prim.ctx
printf %s '{SECRET}' > secret
run tpm2_create -Q -C prim.ctx -i secret -u seal.pub -r seal.priv -p sealpass
run tpm2_load -Q -C prim.ctx -u seal.pub -r seal.priv -c seal.ctx
echo "GUEST: unsealed=$(tpm2_unseal -c seal.ctx -p sealpass)"
echo "GUEST: done"
poweroff -f
"""


def qemu_linux(sock: str, kernel_path: str, initrd: str, device: str) -> list[str]:
    machine = "q35" if device == "tpm-crb" else "pc"
    return [
        require("qemu-system-x86_64"),
        *("-machine", machine, "-accel", "tcg", "-m", "256", "-nic", "none"),
        *("-kernel", kernel_path, "-initrd", initrd, "-no-reboot", "-nographic"),
        *("-append", "console=ttyS0 panic=-1 quiet loglevel=3"),
        *("-chardev", f"socket,id=chrtpm,path={sock}"),
        *("-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", f"{device},tpmdev=tpm0"),
    ]


def test_guest_kernel_has_the_tpm_drivers():
    for option in ("CONFIG_TCG_TPM", "CONFIG_TCG_TIS", "CONFIG_TCG_CRB"):
        assert kernel_config(option) == "y", option  # built in: no modules in the initramfs


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("linux-guest")
    initrd = build_initramfs(tmp, INIT, TOOLS)
    sw = CtrlSwtpm(tmp / "swtpm")
    sniff = start_sniff(tmp, sw.sock, extra=["--console", "summary"])
    try:
        p = subprocess.run(
            qemu_linux(sniff.listen, str(kernel()), str(initrd), "tpm-crb"),
            capture_output=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
        serial = p.stdout.decode(errors="replace")
        sw.proc.wait(20)  # poweroff: QEMU sends CMD_SHUTDOWN, swtpm exits
    finally:
        sniff.stop()
        sw.stop()
    yield {"serial": serial, "sniff": sniff, "sw": sw, "rc": p.returncode}


def test_guest_sees_the_tpm_and_seals(guest):
    serial = guest["serial"]
    assert "GUEST: done" in serial, serial[-3000:]
    assert "GUEST: devices /dev/tpm0 /dev/tpmrm0" in serial
    for tool in ("tpm2_createprimary", "tpm2_create", "tpm2_load"):
        assert f"GUEST: rc=0 {tool}" in serial, serial[-3000:]
    assert f"GUEST: unsealed={SECRET}" in serial


def test_guest_traffic_is_byte_identical_to_swtpm_log(guest):
    n_cmds = assert_capture_matches_log(guest["sniff"], [guest["sw"].log])
    assert n_cmds > 20
    comments = "\\n".join(p.comment for p in read_pcapng(str(guest["sniff"].pcap)))
    for cc in ("ContextSave", "ContextLoad", "Unseal", "Create", "CreatePrimary"):
        assert f" cmd {cc} " in comments, cc


def test_check_grades_sessions_across_resource_manager_swaps(guest):
    """tpm2-tools (5.4) authorises through an HMAC session with symmetric NULL; the kernel
    RM context-saves that session and every object after each command and reloads them
    before the next. The session keeps the facts of its StartAuthSession through every
    swap (no unknown-origin, no UNKNOWN), parameters it does not encrypt are PLAINTEXT,
    and `check --secret` finds the sealed secret in clear, in Create and in Unseal."""
    pcap = str(guest["sniff"].pcap)
    p = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "decode", "--output", "jsonl", pcap],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    tpm = [r for r in recs if r["channel"] == "tpm"]
    assert all(r["param"] != "UNKNOWN" for r in tpm)
    swaps = [r for r in tpm if r["command"] in ("ContextSave", "ContextLoad")]
    assert len(swaps) > 10
    used = [r for r in tpm if any(s["handle"] == "0x02000000" for s in r["sessions"])]
    assert {r["command"] for r in used} >= {"CreatePrimary", "Create", "Load", "Unseal"}
    for r in used:
        (facts,) = [s["facts"] for s in r["sessions"] if s["handle"] == "0x02000000"]
        assert (facts["type"], facts["origin"], facts["symmetric"]) == ("hmac", "observed", "NULL")
    graded = {(r["command"], r["direction"]): r["param"] for r in used}
    assert graded[("Create", "command")] == "PLAINTEXT"
    assert graded[("Unseal", "response")] == "PLAINTEXT"
    p = subprocess.run(
        [sys.executable, "-m", "tpmsniff", "check", "--secret", SECRET, pcap],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0
    assert "Unseal response" in p.stdout and "Create command" in p.stdout, p.stdout
    assert SECRET not in p.stdout + p.stderr  # a report never shows the secret
