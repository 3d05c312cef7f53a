"""Raw logic levels -> SPI frames: Saleae Logic 2 digital CSV, VCD, and sigrok `.sr`
(converted to VCD by `sigrok-cli`, which is run when such a file is read).

Channels are found by name (CS/CE/SS, CLK/SCK/SCLK, MOSI/SDI/COPI, MISO/SDO/CIPO, any
case, `#`/`_n` suffixes allowed); unnamed Logic 2 channels are taken in the order
Channel 0..3 = CS, CLK, MOSI, MISO (docs/hardware.md).
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator

from ...codec.tis import BusWarning
from ..errors import InputError
from .spi import SpiFrame, SpiSampler

ROLES = ("cs", "clk", "mosi", "miso")
_NAMES = {
    "cs": {"cs", "ce", "ss", "csn", "ncs", "nss", "cs0", "chipselect", "spics"},
    "clk": {"clk", "sck", "sclk", "clock", "spiclk"},
    "mosi": {"mosi", "sdi", "copi", "si", "din", "spimosi"},
    "miso": {"miso", "sdo", "cipo", "so", "dout", "spimiso"},
}
SIGROK_TIMEOUT = 600  # seconds sigrok-cli may take to convert one .sr file


def role_of(name: str) -> str | None:
    key = re.sub(r"[^a-z0-9]", "", name.lower().removesuffix("#").removesuffix("_n"))
    for role, names in _NAMES.items():
        if key in names:
            return role
    return None


def map_channels(names: list[str], path: str) -> dict[str, int]:
    """Role -> column index; Logic 2's default names fall back to the documented order."""
    roles: dict[str, int] = {}
    for i, n in enumerate(names):
        r = role_of(n)
        if r is not None and r not in roles:
            roles[r] = i
    if len(roles) == 4:
        return roles
    if len(names) >= 4 and all(re.fullmatch(r"channel \d+", n.strip().lower()) for n in names):
        return {r: i for i, r in enumerate(ROLES)}
    missing = ", ".join(r.upper() for r in ROLES if r not in roles)
    raise InputError(f"{path}: no SPI channel named {missing} (name them CS, CLK, MOSI, MISO)")


def _spi(
    levels: Iterable[tuple[float, list[int], str]], roles: dict[str, int]
) -> Iterator[SpiFrame | BusWarning]:
    s = SpiSampler()
    c, k, o, i = (roles[r] for r in ROLES)
    for ts, v, where in levels:
        got = s.feed(ts, v[c], v[k], v[o], v[i], where)
        if got is not None:
            yield got
    end = s.finish()
    if end is not None:
        yield end


# -- Saleae Logic 2: File > Export Data > CSV, digital channels ----------------------
def logic2_frames(path: str) -> Iterator[SpiFrame | BusWarning]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = csv.reader(fh)
        head = next(rows, None)
        if not head or not head[0].lower().startswith("time"):
            raise InputError(f"{path}: not a Logic 2 digital CSV export (no Time [s] column)")
        roles = map_channels([h.strip() for h in head[1:]], path)
        roles = {r: i + 1 for r, i in roles.items()}

        def levels() -> Iterator[tuple[float, list[int], str]]:
            for no, row in enumerate(rows, 2):
                try:
                    yield float(row[0]), [0, *(int(x) for x in row[1:])], f"line {no}"
                except (ValueError, IndexError):
                    if row:
                        raise InputError(f"{path}: line {no}: not a row of levels") from None

        yield from _spi(levels(), roles)


# -- VCD (also what sigrok-cli makes of a .sr file) ----------------------------------
_SCALE = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}


def vcd_frames(lines: Iterable[str], path: str) -> Iterator[SpiFrame | BusWarning]:
    """SPI frames of a VCD's 1-bit signals (scalar changes only)."""
    it = iter(lines)
    ids: dict[str, int] = {}
    names: list[str] = []
    unit = 1e-9
    header: list[str] = []
    for line in it:
        header.append(line)
        if "$enddefinitions" in line:
            break
    else:
        raise InputError(f"{path}: not a VCD file (no $enddefinitions)")
    text = " ".join(header)
    m = re.search(r"\$timescale\s+(\d+)\s*([a-z]+)\s+\$end", text)
    if m:
        unit = int(m.group(1)) * _SCALE.get(m.group(2), 1e-9)
    for m in re.finditer(r"\$var\s+\w+\s+1\s+(\S+)\s+(\S+)", text):
        ids[m.group(1)] = len(names)
        names.append(m.group(2))
    roles = map_channels(names, path)

    def levels() -> Iterator[tuple[float, list[int], str]]:
        v = [0] * len(names)
        t: float | None = None
        for no, line in enumerate(it, len(header) + 1):
            for tok in line.split():
                if tok[0] == "#":
                    if t is not None:
                        yield t * unit, v, f"line {no}"
                    t = float(tok[1:])
                elif tok[0] in "01xXzZ" and tok[1:] in ids:
                    v[ids[tok[1:]]] = 1 if tok[0] == "1" else 0
                elif tok.startswith("$"):
                    continue
        if t is not None:
            yield t * unit, v, "end"

    yield from _spi(levels(), roles)


def vcd_file_frames(path: str) -> Iterator[SpiFrame | BusWarning]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from vcd_frames(fh, path)


def sr_frames(path: str) -> Iterator[SpiFrame | BusWarning]:
    """A sigrok session file, through `sigrok-cli -O vcd` (streamed, not held in memory)."""
    exe = shutil.which("sigrok-cli")
    if exe is None:
        raise InputError(f"{path}: reading .sr files needs sigrok-cli (Debian: sigrok-cli)")
    proc = subprocess.Popen(
        [exe, "-i", path, "-O", "vcd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield from vcd_frames(proc.stdout, path)
    finally:
        proc.stdout.close()
        err = proc.stderr.read(4096)
        try:
            rc = proc.wait(SIGROK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        proc.stderr.close()
    if rc != 0:
        why = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        raise InputError(f"{path}: sigrok-cli could not read it: {why}")
