"""The secret checker: does a secret cross the TPM bus, and was what must be encrypted?

One `Checker` serves `tpmsniff check` (files), the live relay (`--secret`) and the pytest
plugin. It never passes vacuously: no TPM message, or none of the required commands,
is a failure unless the caller allows it.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field

from tpm2_pytss.constants import TPM2_CC

from .model import Channel, Direction, Frame, Verdict
from .tpm import command_layout, response_layout

TPM_RS_PW = 0x40000009


@dataclass(frozen=True, slots=True)
class Secret:
    label: str
    value: bytes

    def encodings(self) -> list[tuple[str, bytes]]:
        v = self.value
        return [
            ("raw", v),
            ("hex", v.hex().encode()),
            ("HEX", v.hex().upper().encode()),
            ("base64", base64.b64encode(v)),
        ]


@dataclass(frozen=True, slots=True)
class Requirement:
    cc: int
    name: str
    direction: Direction

    @classmethod
    def parse(cls, text: str) -> Requirement:
        name, _, d = text.partition(":")
        try:
            cc = int(TPM2_CC.parse(name.lower().replace("_", "")))
        except Exception:
            matches = [n for n in dir(TPM2_CC) if n.lower() == name.lower()]
            if not matches:
                raise ValueError(f"unknown TPM command {name!r}") from None
            cc = int(getattr(TPM2_CC, matches[0]))
        canon = TPM2_CC.to_string(cc).removeprefix("TPM2_CC.")
        if d:
            if d not in ("command", "response"):
                raise ValueError(f"{text!r}: direction is command or response")
            return cls(cc, canon, Direction(d))
        cmd = command_layout(cc)
        if cmd is not None and cmd[1] is not None:
            return cls(cc, canon, Direction.COMMAND)
        rsp = response_layout(cc)
        if rsp is not None and rsp[1] is not None:
            return cls(cc, canon, Direction.RESPONSE)
        raise ValueError(f"{canon} has no encryptable parameter in either direction")

    def __str__(self) -> str:
        return f"{self.name}:{self.direction}"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "secret" | "not-encrypted" | "weak" | "empty" | "not-seen"
    message: str
    frame: int | None = None
    conn: int | None = None
    command: str | None = None
    direction: str | None = None
    offset: int | None = None
    field: str | None = None
    file: str | None = None

    def text(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        if self.conn is not None:
            where.append(f"conn {self.conn}")
        if self.command:
            where.append(f"{self.command} {self.direction}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.field:
            where.append(f"field {self.field}")
        return f"{self.kind.upper()}: {self.message}" + (f" ({', '.join(where)})" if where else "")


def field_at(f: Frame, offset: int) -> str:
    """Name the part of the message holding byte `offset` of f.raw."""
    if f.channel is Channel.CTRL or f.tpm is None:
        return "control message" if f.channel is Channel.CTRL else "unframed bytes"
    t = f.tpm
    rel = offset - f.prefix
    if rel < 0:
        return "mssim prefix"
    if rel >= t.size:
        return "mssim trailer"
    if rel < 10:
        return "header"
    p = t.param
    if p.offset is not None and p.size is not None and p.offset <= rel < p.offset + 2 + p.size:
        return f"parameter[0] {p.type_name}"
    pos = 10 + 4 * len(t.handles)
    if rel < pos:
        return f"handle[{(rel - 10) // 4}]"
    if t.header_only:
        return "body"
    msg = f.message
    if f.direction is Direction.COMMAND:
        if t.tag == 0x8002:
            if rel < pos + 4:
                return "authorizationSize"
            pos += 4
            for i, s in enumerate(t.sessions):
                end = pos + 4 + 2 + len(s.nonce) + 1 + 2 + len(s.auth)
                if rel < end:
                    if rel >= end - len(s.auth):
                        kind = "password authValue" if s.handle == TPM_RS_PW else "hmac"
                        return f"session[{i}].{kind}"
                    return f"session[{i}]"
                pos = end
        return "parameters"
    if t.tag == 0x8002:
        psize = int.from_bytes(msg[pos : pos + 4], "big")
        if rel < pos + 4:
            return "parameterSize"
        if rel < pos + 4 + psize:
            return "parameters"
        return "sessions"
    return "parameters"


@dataclass
class Checker:
    secrets: list[Secret] = field(default_factory=list)
    requires: list[Requirement] = field(default_factory=list)
    allow_weak: bool = False
    allow_empty: bool = False
    findings: list[Finding] = field(default_factory=list)
    tpm_frames: int = 0
    seen: dict[Requirement, int] = field(default_factory=lambda: defaultdict(int))
    _streams: dict[tuple, bytearray] = field(default_factory=dict)
    file: str | None = None

    def feed(self, f: Frame) -> list[Finding]:
        new: list[Finding] = []
        if f.channel is Channel.TPM and f.tpm is not None:
            self.tpm_frames += 1
        for sec in self.secrets:
            new += self._search(f, sec)
        new += self._require(f)
        self.findings += new
        return new

    def _base(self, f: Frame) -> dict:
        return dict(
            frame=f.seq, conn=f.conn, command=f.name, direction=str(f.direction), file=self.file
        )

    def _search(self, f: Frame, sec: Secret) -> list[Finding]:
        out = []
        for enc, needle in sec.encodings():
            if not needle:
                continue
            start = f.raw.find(needle)
            if start >= 0:
                how = "" if enc == "raw" else f" ({enc}-encoded)"
                out.append(
                    Finding(
                        "secret",
                        f"secret {sec.label!r}{how} in clear",
                        offset=start,
                        field=field_at(f, start),
                        **self._base(f),
                    )
                )
            rec = f.tpm.param.recovered if f.tpm is not None else None
            if rec and needle in rec:
                out.append(
                    Finding(
                        "secret",
                        f"secret {sec.label!r} recovered by decrypting a weak session",
                        offset=rec.find(needle),
                        field="parameter[0] (recovered by decryption)",
                        **self._base(f),
                    )
                )
        # across message boundaries within one direction of one stream
        key = (f.conn, f.direction, sec.label)
        buf = self._streams.setdefault(key, bytearray())
        before = len(buf)
        buf += f.raw
        n = len(sec.value)
        if n > 1 and before:
            window_start = max(0, before - n + 1)
            idx = bytes(buf[window_start:]).find(sec.value)
            if idx >= 0 and window_start + idx < before:
                out.append(
                    Finding(
                        "secret",
                        f"secret {sec.label!r} spans a message boundary",
                        offset=window_start + idx - before,
                        field="stream",
                        **self._base(f),
                    )
                )
        del buf[: max(0, len(buf) - (n - 1))]  # keep only what can still start a match
        return out

    def _require(self, f: Frame) -> list[Finding]:
        if f.tpm is None or f.channel is not Channel.TPM:
            return []
        out = []
        for r in self.requires:
            if f.tpm.cc != r.cc or f.direction is not r.direction:
                continue
            p = f.tpm.param
            if p.verdict is Verdict.NA:
                continue  # an error response or an empty buffer: nothing crossed
            self.seen[r] += 1
            if p.verdict is Verdict.ENCRYPTED:
                continue
            if p.verdict is Verdict.WEAK:
                if not self.allow_weak:
                    out.append(
                        Finding(
                            "weak", f"{r} is only WEAK-ly encrypted ({p.strength})", **self._base(f)
                        )
                    )
                continue
            out.append(
                Finding("not-encrypted", f"{r} is {p.verdict}, required ENCRYPTED", **self._base(f))
            )
        return out

    def finish(self) -> list[Finding]:
        """Final findings: vacuity guards. Call once, after the last frame."""
        end: list[Finding] = []
        if not self.allow_empty:
            if self.tpm_frames == 0:
                end.append(Finding("empty", "no TPM messages seen", file=self.file))
            for r in self.requires:
                if self.seen.get(r, 0) == 0:
                    end.append(
                        Finding("not-seen", f"no {r} message with a parameter seen", file=self.file)
                    )
        self.findings += end
        return end

    @property
    def failed(self) -> bool:
        return bool(self.findings)
