"""A tiny Linux guest for the QEMU tests: Debian's kernel (fetched by `make guest` into
out/guest) and an initramfs built here from the host's own busybox and tpm2-tools, with
the shared libraries they need, so what runs inside the guest is what the host tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "out" / "guest"
# dlopen()ed by libtss2-tctildr, so ldd of tpm2 does not list it
TCTI = "libtss2-tcti-device.so.0"


def kernel() -> Path:
    path = GUEST / "vmlinuz"
    if not path.exists():
        pytest.fail("guest kernel missing: run `make guest`", pytrace=False)
    return path


def kernel_config(option: str) -> str | None:
    for line in (GUEST / "config").read_text().splitlines():
        if line.startswith(f"{option}="):
            return line.split("=", 1)[1]
    return None


def _libs(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(/\S+\.so[.\d]*)", out))


def _which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"required tool {tool!r} is not installed (run `make deps`)", pytrace=False)
    return path


def build_initramfs(dest: Path, init_script: str, tools: tuple[str, ...]) -> Path:
    """A newc cpio (made by the host's cpio) with busybox, `tools` and their libraries
    under the same paths as on the host, and `init_script` as /init."""
    root = dest / "initramfs"
    root.mkdir(parents=True)
    files = {_which("busybox")}
    for tool in tools:
        path = _which(tool)
        files |= {path, os.path.realpath(path)} | _libs(os.path.realpath(path))
    tcti = next(
        (
            p
            for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu")
            if os.path.exists(p := f"{d}/{TCTI}")
        ),
        None,
    )
    if tcti is None:
        pytest.fail(f"{TCTI} missing (package libtss2-tcti-device0)", pytrace=False)
    files |= {tcti, os.path.realpath(tcti)} | _libs(tcti)
    files |= {os.path.realpath(f) for f in files}  # the targets of symlinked libraries
    for f in sorted(files):
        # the host is usr-merged (/lib -> usr/lib): place every file at its directory's
        # real path, and make the same top-level links inside the initramfs
        target = root / os.path.realpath(os.path.dirname(f)).lstrip("/") / os.path.basename(f)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            continue
        if os.path.islink(f):
            target.symlink_to(os.readlink(f))
        else:
            shutil.copy2(f, target)
    for d in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / d).mkdir(parents=True, exist_ok=True)
        (root / d).symlink_to(f"usr/{d}")
    for d in ("proc", "sys", "dev", "tmp"):
        (root / d).mkdir()
    init = root / "init"
    init.write_text(init_script)
    init.chmod(0o755)
    cpio = dest / "initramfs.cpio"
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with cpio.open("wb") as out:
        subprocess.run(
            [_which("cpio"), "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names,
            stdout=out,
            check=True,
        )
    return cpio
