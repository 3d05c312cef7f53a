"""`make demo`: a private swtpm, tpmsniff in front of it, and a seal/unseal workload.

The console shows every TPM command and response as it crosses tpmsniff; the annotated
pcapng is left in out/demo/ for Wireshark.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "demo"
SECRET = b"my-disk-key-0123"


def wait_path(path: Path, proc: subprocess.Popen, what: str) -> None:
    for _ in range(500):
        if path.exists():
            return
        if proc.poll() is not None:
            sys.exit(f"demo: {what} exited early ({proc.returncode})")
        time.sleep(0.02)
    sys.exit(f"demo: {what} did not start")


def main() -> int:
    for tool in ("swtpm", "tpm2_createprimary", "tshark"):
        if shutil.which(tool) is None:
            sys.exit(f"demo: {tool} not found; run `make deps`")
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "state").mkdir(parents=True)
    sw_sock, sniff_sock, pcap = OUT / "swtpm.sock", OUT / "tpmsniff.sock", OUT / "capture.pcapng"
    swtpm = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={OUT / 'state'}",
            "--server",
            f"type=unixio,path={sw_sock}",
            "--ctrl",
            f"type=unixio,path={sw_sock}.ctrl",
            "--flags",
            "not-need-init,startup-clear",
        ]
    )
    wait_path(Path(f"{sw_sock}.ctrl"), swtpm, "swtpm")
    sniff = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tpmsniff",
            "--listen",
            str(sniff_sock),
            "--upstream",
            str(sw_sock),
            "--pcap",
            str(pcap),
        ]
    )
    wait_path(Path(f"{sniff_sock}.ctrl"), sniff, "tpmsniff")
    env = dict(os.environ, TPM2TOOLS_TCTI=f"swtpm:path={sniff_sock}")

    def tool(*args: str, input: bytes | None = None) -> bytes:
        p = subprocess.run(args, env=env, cwd=OUT, input=input, capture_output=True)
        if p.returncode:
            sys.stderr.write(p.stderr.decode())
            raise SystemExit(f"demo: {' '.join(args)} failed")
        return p.stdout

    try:
        tool("tpm2_createprimary", "-Q", "-C", "o", "-c", "primary.ctx")
        tool("tpm2_flushcontext", "-t")
        tool(
            "tpm2_create",
            "-Q",
            "-C",
            "primary.ctx",
            "-i",
            "-",
            "-u",
            "seal.pub",
            "-r",
            "seal.priv",
            input=SECRET,
        )
        tool("tpm2_flushcontext", "-t")
        tool(
            "tpm2_load",
            "-Q",
            "-C",
            "primary.ctx",
            "-u",
            "seal.pub",
            "-r",
            "seal.priv",
            "-c",
            "seal.ctx",
        )
        tool("tpm2_flushcontext", "-t")
        unsealed = tool("tpm2_unseal", "-c", "seal.ctx")
        time.sleep(0.3)
    finally:
        sniff.send_signal(signal.SIGTERM)
        sniff.wait(10)
        swtpm.terminate()
        swtpm.wait(10)
    ok = unsealed == SECRET
    print()
    print(f"demo: sealed {SECRET!r}, unsealed {unsealed!r}: {'OK' if ok else 'MISMATCH'}")
    print("demo: tpm2-tools' default sessions do not encrypt parameters, so the secret crossed")
    print("      the bus in clear: see the Create command and Unseal response marked PLAINTEXT.")
    print(f"demo: annotated capture: {pcap}  (wireshark {pcap.relative_to(ROOT)})")
    print("demo: what CI would say about it:")
    cmd = [
        "check",
        str(pcap.relative_to(ROOT)),
        "--secret",
        SECRET.decode(),
        "--require-encrypted",
        "Create",
        "--require-encrypted",
        "Unseal",
    ]
    print(f"  $ tpmsniff {' '.join(cmd)}")
    check = subprocess.run(
        [sys.executable, "-m", "tpmsniff", *cmd], cwd=ROOT, capture_output=True, text=True
    )
    print("  " + check.stdout.replace("\n", "\n  ").rstrip() + f"\n  (exit {check.returncode})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
