"""A TPM bus simulator: real swtpm messages -> the register traffic a TIS/FIFO driver
makes on SPI, LPC or I2C -> each file format tpmsniff reads from logic analysers.

The driver model follows the TCG PTP FIFO flow: locality request, STS polling until
commandReady, the command written in burstCount-sized FIFO chunks, tpmGo, STS polling
until dataAvail, the response read in chunks, optional responseRetry (the whole
response read again), commandReady to go idle. SPI transactions get random wait states.
"""

from __future__ import annotations

import csv
import io
import random
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tpmsniff.inputs.swtpmlog import parse_file

STS, FIFO, ACCESS, XFIFO = 0x18, 0x24, 0x00, 0x80
REG_NAMES = {0x00: "TPM_ACCESS", 0x18: "TPM_STS", 0x24: "TPM_DATA_FIFO", 0x80: "TPM_XDATA_FIFO"}


@dataclass(frozen=True, slots=True)
class Op:
    """One simulated register access: what the bus carried, and how many wait states."""

    write: bool
    locality: int
    reg: int
    data: bytes
    waits: int = 0


def swtpm_pairs(path: str | Path) -> list[tuple[bytes, bytes]]:
    """(command, response) pairs of an swtpm --log file, in order."""
    msgs = [m for m in parse_file(str(path)) if m.kind.startswith("tpm")]
    out = []
    for c, r in zip(msgs[::2], msgs[1::2], strict=False):
        assert c.kind == "tpm-cmd" and r.kind == "tpm-rsp"
        out.append((c.data, r.data))
    return out


class Driver:
    """Makes the register operations of a FIFO driver for each command/response pair."""

    def __init__(
        self,
        seed: int = 0,
        localities: Sequence[int] = (0,),
        max_waits: int = 3,
        retry: float = 0.1,
        xfifo: bool = False,
        max_chunk: int = 64,
    ) -> None:
        self.rnd = random.Random(seed)
        self.localities = localities
        self.max_waits = max_waits
        self.retry = retry
        self.xfifo = xfifo
        self.max_chunk = max_chunk
        self.loc: int | None = None
        self.ops: list[Op] = []

    def _op(self, write: bool, reg: int, data: bytes) -> None:
        assert self.loc is not None
        self.ops.append(Op(write, self.loc, reg, data, self.rnd.randint(0, self.max_waits)))

    def _sts(self, value: int, burst: int = 0) -> None:
        self._op(False, STS, bytes([value]) + burst.to_bytes(2, "little") + b"\x00")

    def _burst(self) -> int:
        return self.rnd.randint(1, self.max_chunk)

    def _locality(self) -> None:
        want = self.rnd.choice(self.localities)
        if want == self.loc:
            return
        if self.loc is not None:
            self._op(True, ACCESS, b"\x20")  # activeLocality: relinquish
        self.loc = want
        self._op(True, ACCESS, b"\x02")  # requestUse
        for _ in range(self.rnd.randint(0, 2)):
            self._op(False, ACCESS, b"\x81")  # not yet
        self._op(False, ACCESS, b"\xa1")  # tpmRegValidSts | activeLocality

    def transact(self, cmd: bytes, rsp: bytes) -> None:
        self._locality()
        for _ in range(self.rnd.randint(0, 2)):
            self._sts(0x80)
        self._op(True, STS, b"\x40")  # commandReady
        self._sts(0xC0)
        fifo = XFIFO if self.xfifo and self.rnd.random() < 0.5 else FIFO
        at = 0
        while at < len(cmd):
            burst = self._burst()
            self._sts(0x88, burst)  # stsValid | Expect
            chunk = cmd[at : at + burst]
            self._op(True, fifo, chunk)
            at += len(chunk)
        self._sts(0x80)  # Expect clear
        self._op(True, STS, b"\x20")  # tpmGo
        for _ in range(self.rnd.randint(0, 4)):
            self._sts(0x80)  # executing
        self._read_response(rsp, fifo)
        if self.rnd.random() < self.retry:
            self._op(True, STS, b"\x02")  # responseRetry: read it all again
            self._read_response(rsp, fifo)
        self._op(True, STS, b"\x40")  # idle

    def _read_response(self, rsp: bytes, fifo: int) -> None:
        at = 0
        while at < len(rsp):
            burst = self._burst()
            self._sts(0x90, burst)  # stsValid | dataAvail
            chunk = rsp[at : at + burst]
            self._op(False, fifo, chunk)
            at += len(chunk)
        self._sts(0x80)

    def run(self, pairs: Iterable[tuple[bytes, bytes]]) -> list[Op]:
        for c, r in pairs:
            self.transact(c, r)
        return self.ops


def split64(ops: Iterable[Op]) -> Iterator[Op]:
    """SPI moves at most 64 bytes per transaction."""
    for op in ops:
        for i in range(0, max(len(op.data), 1), 64):
            yield Op(op.write, op.locality, op.reg, op.data[i : i + 64], op.waits)


# -- SPI --------------------------------------------------------------------------
BYTE_S = 8e-6  # one SPI byte at 1 MHz
GAP_S = 20e-6


def spi_bytes(op: Op, rnd: random.Random) -> tuple[bytes, bytes]:
    """MOSI and MISO of one SPI TPM transaction (header, address, waits, data)."""
    addr = 0xD40000 | op.locality << 12 | op.reg
    hdr = bytes([(0x00 if op.write else 0x80) | (len(op.data) - 1)]) + addr.to_bytes(3, "big")
    miso_hdr = bytes([rnd.randrange(256) for _ in range(3)]) + bytes([0x00 if op.waits else 0x01])
    waits_mosi = b"\x00" * op.waits
    waits_miso = b"\x00" * (op.waits - 1) + b"\x01" if op.waits else b""
    if op.write:
        return hdr + waits_mosi + op.data, miso_hdr + waits_miso + b"\xff" * len(op.data)
    return hdr + waits_mosi + b"\x00" * len(op.data), miso_hdr + waits_miso + op.data


def timed(ops: Iterable[Op], rnd: random.Random) -> Iterator[tuple[float, Op, bytes, bytes]]:
    t = 0.001
    for op in split64(ops):
        mosi, miso = spi_bytes(op, rnd)
        yield t, op, mosi, miso
        t += len(mosi) * BYTE_S + GAP_S * (1 + rnd.random())


def saleae_hla_csv(ops: Iterable[Op], seed: int = 1, garbage: bool = False) -> str:
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    out.write('name,type,start_time,duration,"register","addr","data","waits"\n')
    for t, op, mosi, _ in timed(ops, rnd):
        if garbage and rnd.random() < 0.05:
            w.writerow(["SPI", "result", f"{t:.9f}", "0.000008", "", "", "", ""])
        name = f"{REG_NAMES.get(op.reg, 'Unknown')}_{op.locality}"
        addr = f"{0xD40000 | op.locality << 12 | op.reg:04x}"
        w.writerow(
            [
                "TPM SPI Transaction",
                "write" if op.write else "read",
                f"{t:.9f}",
                f"{len(mosi) * BYTE_S:.9f}",
                name,
                addr,
                op.data.hex(),
                op.waits,
            ]
        )
    return out.getvalue()


def _spi_tpm_texts(op: Op) -> list[str]:
    waits = f" (Waits: {op.waits})" if op.waits else ""
    reg = f"{REG_NAMES.get(op.reg, 'Unknown')}_{op.locality}"
    return ["Write" if op.write else "Read", f"Register: {reg}", op.data.hex() + waits]


def sigrok_annotations(ops: Iterable[Op], seed: int = 1, pulseview: bool = False) -> str:
    """`sigrok-cli -P spi,spi_tpm -A spi_tpm --protocol-decoder-samplenum` (or PulseView's
    export, times in seconds) of the spi_tpm decoder."""
    rnd = random.Random(seed)
    lines = []
    for t, op, mosi, _ in timed(ops, rnd):
        ss = int(t * 1e6)
        es = ss + len(mosi) * 8
        for text in _spi_tpm_texts(op):
            if pulseview:
                lines.append(f"{t:.9f} s-{t + 1e-6:.9f} s SPI TPM: TPM transactions: {text}")
            else:
                lines.append(f"{ss}-{es} spi_tpm-1: {text}")
    return "\n".join(lines) + "\n"


def dsview_csv(ops: Iterable[Op], seed: int = 1) -> str:
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["Id", "Time[ns]", "SPI TPM: TPM transactions"])
    n = 0
    for t, op, _, _ in timed(ops, rnd):
        for text in _spi_tpm_texts(op):
            w.writerow([n, f"{t * 1e9:.3f}", text])
            n += 1
    return out.getvalue()


def spi_levels(ops: Iterable[Op], seed: int = 1) -> Iterator[tuple[int, int, int, int, int]]:
    """(time in µs, CS, CLK, MOSI, MISO) at every change; 1 µs per half clock."""
    rnd = random.Random(seed)
    t = 10
    cs, clk, mo, mi = 1, 0, 0, 0
    yield t, cs, clk, mo, mi
    for op in split64(ops):
        mosi, miso = spi_bytes(op, rnd)
        t += rnd.randint(2, 6)
        cs = 0
        yield t, cs, clk, mo, mi
        for a, b in zip(mosi, miso, strict=True):
            for i in range(7, -1, -1):
                t += 1
                mo, mi = a >> i & 1, b >> i & 1
                yield t, cs, 0, mo, mi
                t += 1
                yield t, cs, 1, mo, mi
        t += 1
        yield t, cs, 0, mo, mi
        t += 1
        cs = 1
        yield t, cs, 0, mo, mi
    yield t + 10, cs, 0, mo, mi  # idle to the end, as a real capture would be


def logic2_csv(ops: Iterable[Op], seed: int = 1) -> str:
    out = io.StringIO()
    out.write("Time [s],CS,CLK,MOSI,MISO\n")
    last = None
    for t, *v in spi_levels(ops, seed):
        if v != last:
            out.write(f"{t * 1e-6:.9f},{v[0]},{v[1]},{v[2]},{v[3]}\n")
            last = v
    return out.getvalue()


def vcd(ops: Iterable[Op], seed: int = 1) -> str:
    out = io.StringIO()
    out.write(
        "$timescale 1 us $end\n$scope module tpm $end\n"
        '$var wire 1 ! CS $end\n$var wire 1 " CLK $end\n'
        "$var wire 1 # MOSI $end\n$var wire 1 $ MISO $end\n"
        "$upscope $end\n$enddefinitions $end\n"
    )
    last: list[int] = [-1, -1, -1, -1]
    for t, *v in spi_levels(ops, seed):
        ch = [f"{x}{c}" for x, c, p in zip(v, '!"#$', last, strict=True) if x != p]
        if ch:
            out.write(f"#{t}\n" + "\n".join(ch) + "\n")
        last = v
    return out.getvalue()


def sigrok_sr(ops: Iterable[Op], dest: Path, seed: int = 1) -> Path:
    """A real sigrok session file: the simulated signals as VCD, converted by sigrok-cli."""
    exe = shutil.which("sigrok-cli")
    assert exe, "sigrok-cli is required (make deps installs it)"
    src = dest.with_suffix(".vcd")
    src.write_text(vcd(ops, seed))
    subprocess.run([exe, "-i", str(src), "-o", str(dest)], check=True, timeout=600)
    src.unlink()
    return dest


# -- LPC --------------------------------------------------------------------------
def lpc_lines(ops: Iterable[Op], fifo_only: bool = True, parsed: bool = False) -> str:
    """One line per LPC cycle, as lpc_sniffer_tpm's read_serial.py (or parse.py) prints it.
    `fifo_only`: the TPM-specific sniffer logs only addresses 0x24-0x27."""
    lines = []
    for op in ops:
        reg = op.reg
        for b in op.data:
            if fifo_only and not 0x24 <= reg <= 0x27:
                continue
            addr = op.locality << 12 | reg
            if parsed:
                kind = "write" if op.write else "read"
                lines.append(f" io: {kind:>5} {addr:08x}:   {b:02x}")
            else:
                flags = 0x02 if op.write else 0x00
                lines.append(f"b'{addr:08x}{b:02x}{flags:02x}'")
            if not 0x24 <= op.reg <= 0x27:
                reg += 1  # multi-byte registers: one cycle per byte address
    return "\n".join(lines) + "\n"


# -- I2C --------------------------------------------------------------------------
I2C_ADDR = 0x2E


def i2c_transfers(ops: Iterable[Op]) -> Iterator[tuple[bool, bytes]]:
    """(read, bytes) of each I2C transfer, TPM_LOC_SEL written on a locality change."""
    loc = 0
    for op in ops:
        if op.reg == ACCESS:
            continue  # I2C's TPM_ACCESS is at 0x04; locality goes by TPM_LOC_SEL
        if op.locality != loc:
            loc = op.locality
            yield False, bytes([0x00, loc])
        if op.write:
            yield False, bytes([op.reg]) + op.data
        else:
            yield False, bytes([op.reg])
            yield True, op.data


def i2c_annotations(ops: Iterable[Op]) -> str:
    """What `sigrok-cli -P i2c -A i2c` prints (bit annotations left out)."""
    lines = []
    for read, data in i2c_transfers(ops):
        rw = "read" if read else "write"
        lines += ["i2c-1: Start", "i2c-1: " + rw.title(), f"i2c-1: Address {rw}: {I2C_ADDR:02X}"]
        lines.append("i2c-1: ACK")
        for b in data:
            lines += [f"i2c-1: Data {rw}: {b:02X}", "i2c-1: ACK"]
        lines.append("i2c-1: Stop")
    return "\n".join(lines) + "\n"


def i2c_vcd(ops: Iterable[Op]) -> str:
    """SCL/SDA levels of the I2C transfers (1 µs steps), for the real sigrok i2c decoder."""
    out = io.StringIO()
    out.write(
        "$timescale 1 us $end\n$scope module tpm $end\n"
        '$var wire 1 ! SCL $end\n$var wire 1 " SDA $end\n$upscope $end\n$enddefinitions $end\n'
    )
    t = 0
    scl = sda = 1

    def put() -> None:
        nonlocal t
        out.write(f'#{t}\n{scl}!\n{sda}"\n')
        t += 1

    def bit(b: int) -> None:
        nonlocal scl, sda
        scl = 0
        put()
        sda = b
        put()
        scl = 1
        put()
        put()

    put()
    for read, data in i2c_transfers(ops):
        sda = 0
        put()  # START: SDA falls while SCL is high
        byte0 = I2C_ADDR << 1 | (1 if read else 0)
        for byte in [byte0, *data]:
            for i in range(7, -1, -1):
                bit(byte >> i & 1)
            bit(0)  # ACK
        scl = 0
        put()
        sda = 0
        put()
        scl = 1
        put()
        sda = 1
        put()  # STOP: SDA rises while SCL is high
        put()
    return out.getvalue()
