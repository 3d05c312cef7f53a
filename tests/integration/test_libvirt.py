"""Issue 19.1: libvirt's external TPM backend through tpmsniff.

A real libvirtd (and virtlogd), started by the test as root without systemd, defines and
starts a SeaBIOS guest whose `<tpm><backend type='external'>` points at tpmsniff's socket
(owned libvirt-qemu:kvm, as docs/deploy.md sets it up); every TPM and control message of
the guest in the capture equals swtpm's `--log level=2`, in order.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import require, start_sniff, wait_for
from helpers.qemu import CtrlSwtpm, assert_capture_matches_log, wait_idle_after_boots

pytestmark = pytest.mark.integration

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"
URI = "qemu:///system"


def domain_xml(name: str, sock: str, model: str = "tpm-crb") -> str:
    """A small TCG guest: SeaBIOS, no disk, rebooting every second; ACPI on (without it
    the firmware never finds the TPM)."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><bios rebootTimeout='1000'/></os>
  <features><acpi/></features>
  <devices>
    <emulator>{require("qemu-system-x86_64")}</emulator>
    <tpm model='{model}'>
      <backend type='external'><source type='unix' mode='connect' path='{sock}'/></backend>
    </tpm>
  </devices>
</domain>
"""


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [require("virsh"), "-c", URI, *args], capture_output=True, text=True, timeout=60
    )
    if check and p.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {p.stderr.strip()}")
    return p


def _up(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def libvirtd():
    """libvirtd + virtlogd as root daemons (no systemd here); stopped afterwards if this
    fixture started them."""
    if os.geteuid() != 0:
        pytest.fail("the libvirt test runs libvirtd, which needs root", pytrace=False)
    started = []
    if not _up(LIBVIRT_SOCK):
        for daemon in ("virtlogd", "libvirtd"):
            subprocess.run([require(daemon), "-d"], check=True, timeout=30)
            started.append(Path(f"/run/{daemon}.pid"))
        wait_for(lambda: _up(LIBVIRT_SOCK), 30, "libvirtd socket")
        wait_for(lambda: virsh("version", check=False).returncode == 0, 30, "libvirtd answers")
    yield
    for pidfile in reversed(started):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), 15)


@pytest.fixture
def guest_dir():
    """QEMU runs as libvirt-qemu: the socket's directories must be traversable, which
    pytest's 0700 tmp_path is not."""
    d = Path(tempfile.mkdtemp(prefix="tpmsniff-libvirt-", dir="/run"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_domxml_to_native_hands_qemu_our_socket(libvirtd):
    """The external backend becomes exactly the chardev/tpmdev pair QEMU mode serves."""
    xml = domain_xml("tpmsniff-argv", "/run/tpmsniff/vm1.sock")
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(xml)
        f.flush()
        argv = virsh("domxml-to-native", "qemu-argv", f.name).stdout.split()
    assert "socket,id=chrtpm,path=/run/tpmsniff/vm1.sock" in argv
    assert "emulator,id=tpm-tpm0,chardev=chrtpm" in argv
    assert any('"driver":"tpm-crb"' in a for a in argv)


@pytest.mark.parametrize("model", ["tpm-crb", "tpm-tis"])
def test_libvirt_guest_tpm_traffic_is_captured_byte_identical(libvirtd, guest_dir, model):
    sw = CtrlSwtpm(guest_dir / "swtpm")
    owner = ["--listen-owner", "libvirt-qemu:kvm", "--listen-mode", "0660"]
    sniff = start_sniff(guest_dir, sw.sock, extra=["--console", "summary", *owner])
    name = f"tpmsniff-test-{os.getpid()}-{model}"
    xml = guest_dir / "domain.xml"
    xml.write_text(domain_xml(name, sniff.listen, model))
    try:
        st = os.stat(sniff.listen)
        assert (st.st_mode & 0o777, st.st_uid) == (0o660, pwd.getpwnam("libvirt-qemu").pw_uid)
        virsh("define", str(xml))
        virsh("start", name)
        wait_idle_after_boots(sniff.stdout, 2, timeout=90)
        # SIGTERM only, while the TPM is idle: QEMU sends CMD_SHUTDOWN, swtpm exits
        virsh("destroy", "--graceful", name)
        sw.proc.wait(20)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        sniff.stop()
        sw.stop()
    n_cmds = assert_capture_matches_log(sniff, [sw.log])
    text = sniff.console()
    assert n_cmds > 10 and "cmd PCR_Extend loc=0" in text
    assert "ctrl cmd CMD_SET_DATAFD" in text and "CMD_SHUTDOWN" in text
