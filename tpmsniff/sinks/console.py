"""Human console: EVE-style headers plus an xxd-style hexdump, or one line per message.

Colour only on a TTY (and not with NO_COLOR).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ..codec.ctrl import BLOB_TYPES
from ..model import Channel, ConnInfo, Direction, Frame, Verdict
from .base import BaseSink, SinkContext
from .text import (
    BOLD,
    CYAN,
    DIM,
    GREEN,
    RED,
    RESET,
    YELLOW,
    ctrl_fields,
    one_line,
    session_text,
    tree_lines,
    wants_colour,
)

VERDICT_STYLE = {
    Verdict.ENCRYPTED: GREEN + BOLD,
    Verdict.WEAK: YELLOW + BOLD,
    Verdict.PLAINTEXT: RED + BOLD,
    Verdict.UNKNOWN: YELLOW,
    Verdict.NA: DIM,
}
DUMP_LIMIT = 4096 + 9 + 4  # control blobs are summarised, not dumped


def hexdump(data: bytes, hl: range | None = None, colour: bool = False) -> list[str]:
    """xxd/EVE-style lines: offset, 16 bytes (gap after 8), |ASCII|; `hl` bytes highlighted."""
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        cells = []
        for i, b in enumerate(row):
            cell = f"{b:02x}"
            if colour and hl is not None and off + i in hl:
                cell = f"{YELLOW}{cell}{RESET}"
            cells.append(cell + (" " if i != 7 else "  "))
        pad = "   " * (16 - len(row)) + (" " if len(row) <= 8 else "")
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:08x}  {''.join(cells)}{pad} |{text}|")
    return lines


class ConsoleSink(BaseSink):
    title = "console output"
    formats = ("console", "hexdump", "summary", "tree")

    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        if live:  # `decode --output` picks among every sink's `formats`
            group.add_argument(
                "--console",
                choices=("hexdump", "summary", "tree", "none"),
                default="hexdump",
                help="console output: hexdump, summary (one line per message), tree (every "
                "field with its offset) or none (default: hexdump)",
            )

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> ConsoleSink | None:
        mode = args.console if ctx.live else args.output
        if mode not in cls.formats:
            return None
        return cls("hexdump" if mode == "console" else mode, ctx.text)

    def __init__(
        self, mode: str = "hexdump", out: TextIO | None = None, colour: bool | None = None
    ):
        self.mode = mode
        self.out = out or sys.stdout
        self.colour = wants_colour(self.out) if colour is None else colour

    def _c(self, style: str, text: str) -> str:
        return f"{style}{text}{RESET}" if self.colour else text

    def _print(self, text: str) -> None:
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must never stop the relay

    def conn_open(self, info: ConnInfo) -> None:
        if self.mode == "hexdump":
            self._print(
                self._c(
                    DIM, f"--- conn {info.conn} {info.channel} open: {info.peer} -> {info.upstream}"
                )
            )

    def conn_close(self, conn: int, ts: float) -> None:
        if self.mode == "hexdump":
            self._print(self._c(DIM, f"--- conn {conn} closed"))

    def frame(self, f: Frame) -> None:
        if self.mode == "summary":
            self._print(self._summary(f))
        elif self.mode == "tree":
            self._print(self._tree(f))
        elif self.mode == "hexdump":
            self._print(self._full(f))

    def _stamp(self, f: Frame) -> str:
        t = time.localtime(f.ts)
        return time.strftime("%H:%M:%S", t) + f".{int((f.ts % 1) * 1e6):06d}"

    def _marker(self, f: Frame) -> str:
        v = f.verdict
        if v is Verdict.NA:
            return ""
        word = f"[{f.tpm.param.word}]" if f.tpm is not None else f"[{v}]"
        return self._c(VERDICT_STYLE[v], word)

    def _summary(self, f: Frame) -> str:
        arrow = ">>>" if f.direction is Direction.COMMAND else "<<<"
        line = f"{self._stamp(f)} {arrow} {one_line(f)}"
        v = f.verdict
        if v is not Verdict.NA and self.colour:
            line = line.replace(f":{v}", ":" + self._c(VERDICT_STYLE[v], str(v)), 1)
        return line

    def _tree(self, f: Frame) -> str:
        """The summary line, then every field with its offset (like tpmstream)."""
        lines = [self._summary(f)]
        if f.tpm is not None and f.tpm.fields is not None:
            lines += tree_lines(f.tpm.fields)
        return "\n".join(lines)

    def _full(self, f: Frame) -> str:
        lines = [
            self._c(
                DIM,
                f"[{self._stamp(f)}] #{f.seq} conn {f.conn} {f.channel}"
                + (f" loc {f.locality}" if f.locality is not None else "")
                + (f" {f.framing}" if f.framing.value != "raw" else ""),
            )
        ]
        if f.channel is Channel.CTRL:
            lines += self._ctrl_lines(f)
        elif f.tpm is not None:
            lines += self._tpm_lines(f)
        else:
            d = ">>> Command" if f.direction is Direction.COMMAND else "<<< Response"
            lines.append(self._c(BOLD, f"{d} (unframed, {len(f.raw)} bytes)"))
        if f.error:
            lines.append(self._c(YELLOW, f"    ! {f.error}"))
        hl = None
        if f.tpm is not None and f.tpm.param.offset is not None and f.tpm.param.size:
            start = f.prefix + f.tpm.param.offset + 2
            hl = range(start, start + f.tpm.param.size)
        if f.channel is Channel.CTRL and len(f.raw) > 64:
            lines.append(self._c(DIM, f"    ({len(f.raw)} bytes, not dumped)"))
        else:
            lines += hexdump(f.raw[:DUMP_LIMIT], hl, self.colour)
        if f.direction is Direction.RESPONSE:
            lines.append("")
        return "\n".join(lines)

    def _tpm_lines(self, f: Frame) -> list[str]:
        t = f.tpm
        assert t is not None
        if f.direction is Direction.COMMAND:
            head = f">>> Command: {t.name} (tag=0x{t.tag:04x} size={t.size})"
        else:
            head = f"<<< Response to {t.name}: rc=0x{t.code:08x} (tag=0x{t.tag:04x} size={t.size})"
        marker = self._marker(f)
        lines = [self._c(BOLD + CYAN, head) + (" " + marker if marker else "")]
        if f.direction is Direction.RESPONSE and t.code != 0:
            lines.append(self._c(YELLOW, f"    rc: {t.rc_text}"))
        if t.handles:
            lines.append("    handles: " + " ".join(f"0x{h:08x}" for h in t.handles))
        cmd = f.direction is Direction.COMMAND
        for i, s in enumerate(t.sessions):
            text = session_text(s, command=cmd)
            style = RED + BOLD if cmd and s.is_password and s.auth else ""
            lines.append(f"    session[{i}] " + (self._c(style, text) if style else text))
        p = t.param
        if p.type_name is not None:
            size = "" if p.size is None else f" ({p.size} bytes)"
            word = self._c(VERDICT_STYLE[p.verdict], p.word)
            lines.append(f"    first parameter {p.type_name}{size}: {word}")
            if p.recovered is not None:
                lines.append(
                    self._c(
                        YELLOW + BOLD,
                        f"    recovered by decryption (weak session, proof={p.proof or 'none'}):",
                    )
                )
                lines += ["    " + x for x in hexdump(p.recovered[:DUMP_LIMIT])]
        return lines

    def _ctrl_lines(self, f: Frame) -> list[str]:
        c = f.ctrl
        if c is None:
            return [f"ctrl ({len(f.raw)} bytes)"]
        if f.direction is Direction.COMMAND:
            head = f">>> Ctrl: CMD_{c.name}"
        else:
            res = f" result=0x{c.result:x}" if c.result is not None else ""
            head = f"<<< Ctrl response to CMD_{c.name}:{res}"
        fields = ctrl_fields(c)
        if "blob" in c.fields and isinstance(c.fields["blob"], int):
            fields += f" ({BLOB_TYPES.get(c.fields['blob'], '?')})"
        return [self._c(BOLD, head) + (f"  {fields}" if fields else "")]
