"""The secret checker: does a secret cross the TPM bus, and was what must be encrypted?

One `Checker` serves `tpmsniff check` (files), the live relay (`--secret`) and the pytest
plugin. It never passes vacuously: no TPM message, or none of the required commands,
is a failure unless the caller allows it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..model import Channel, Frame, Verdict
from .findings import Finding, field_at
from .requirements import Requirement
from .secrets import Secret
from .sensitive import SensitivePolicy


def _find_all(data: bytes, needle: bytes) -> list[int]:
    """Offsets of every (possibly overlapping) occurrence of needle in data."""
    out = []
    at = data.find(needle)
    while at >= 0:
        out.append(at)
        at = data.find(needle, at + 1)
    return out


@dataclass
class Checker:
    secrets: list[Secret] = field(default_factory=list)
    requires: list[Requirement] = field(default_factory=list)
    allow_weak: bool = False
    allow_empty: bool = False
    sensitive: SensitivePolicy | None = None
    findings: list[Finding] = field(default_factory=list)
    tpm_frames: int = 0
    seen: dict[Requirement, int] = field(default_factory=lambda: defaultdict(int))
    _streams: dict[tuple[int, str, int], bytearray] = field(default_factory=dict)
    _decoded_hits: dict[tuple[str, int, str], int] = field(default_factory=dict)
    file: str | None = None

    def feed(self, f: Frame) -> list[Finding]:
        new: list[Finding] = []
        if f.channel is Channel.TPM and f.tpm is not None:
            self.tpm_frames += 1
        for sec in self.secrets:
            new += self._search(f, sec)
        new += self._require(f)
        if self.sensitive is not None:
            new += [replace(x, **self._base(f)) for x in self.sensitive.findings(f)]
        self.findings += new
        return new

    def _base(self, f: Frame) -> dict[str, Any]:
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
                        f"{sec.label}{how} in clear",
                        offset=start,
                        field=field_at(f, start),
                        secret=sec.number,
                        **self._base(f),
                    )
                )
            if self.file is not None:
                k = (self.file, sec.number, enc)
                self._decoded_hits[k] = self._decoded_hits.get(k, 0) + len(_find_all(f.raw, needle))
            rec = f.tpm.param.recovered if f.tpm is not None else None
            if rec and needle in rec and f.tpm is not None:
                p = f.tpm.param
                fs = f.tpm.fields
                name = fs.parameters[0].name if fs is not None and fs.parameters else "parameter[0]"
                proof = f", proof={p.proof}" if p.proof else ""
                proof += f", plaintext={p.plaintext}" if p.plaintext else ""
                out.append(
                    Finding(
                        "secret",
                        f"{sec.label}{'' if enc == 'raw' else f' ({enc}-encoded)'} recovered "
                        f"by decrypting a weak session ({p.strength}{proof})",
                        offset=rec.find(needle),
                        field=f"{name} (recovered by decryption)",
                        secret=sec.number,
                        **self._base(f),
                    )
                )
        # across message boundaries within one direction of one stream
        key = (f.conn, str(f.direction), sec.number)
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
                        f"{sec.label} spans a message boundary",
                        offset=window_start + idx - before,
                        field="stream",
                        secret=sec.number,
                        **self._base(f),
                    )
                )
        del buf[: max(0, len(buf) - (n - 1))]  # keep only what can still start a match
        return out

    def scan_raw(
        self, path: str, chunks: Iterable[bytes], skip: Sequence[tuple[int, int]] = ()
    ) -> list[Finding]:
        """Search an input file's bytes (given in chunks, in order) for every secret,
        independently of parsing. Call after its frames were fed. Occurrences beyond those
        counted inside decoded messages of that file are findings: a secret present in an
        input never passes. `skip`: sorted file ranges [start, end) of tpmsniff's own
        annotations (inputs.pcapng.own_comment_spans); an occurrence touching one is not
        counted when a decoded message of the file already gave a finding for that secret
        (found once, where it is); otherwise (an altered capture: the annotation says what
        its message no longer does) it is a finding, so a secret in an input never passes."""
        starts = [a for a, _ in skip]

        def own(at: int, n: int) -> bool:
            i = bisect_right(starts, at + n - 1) - 1
            return i >= 0 and skip[i][1] > at

        needles = [
            (sec, enc, needle) for sec in self.secrets for enc, needle in sec.encodings() if needle
        ]
        total = [0] * len(needles)
        first = [-1] * len(needles)
        in_own = [-1] * len(needles)  # first offset inside one of our annotations
        keep = max((len(n) for _, _, n in needles), default=1) - 1
        tail = b""
        base = 0  # file offset of tail[0]
        for chunk in chunks:
            buf = tail + chunk
            for i, (_, _, needle) in enumerate(needles):
                for at in _find_all(buf, needle):
                    if at + len(needle) > len(tail):  # not already counted in the tail
                        if skip and own(base + at, len(needle)):
                            if in_own[i] < 0:
                                in_own[i] = base + at
                            continue
                        total[i] += 1
                        if first[i] < 0:
                            first[i] = base + at
            cut = max(0, len(buf) - keep)
            base += cut
            tail = buf[cut:]
        out = []
        found = {x.secret for x in self.findings if x.file == path and x.frame is not None}
        for i, (sec, enc, _) in enumerate(needles):
            inside = self._decoded_hits.get((path, sec.number, enc), 0)
            how = "" if enc == "raw" else f" ({enc}-encoded)"
            if in_own[i] >= 0 and sec.number not in found and total[i] <= inside:
                msg = (
                    f"{sec.label}{how} found in tpmsniff's own annotation at offset "
                    f"{in_own[i]}, but in no decoded message (an altered capture?)"
                )
                out.append(Finding("secret", msg, file=path, secret=sec.number))
                continue
            if total[i] <= inside:
                continue
            if inside == 0:
                msg = (
                    f"{sec.label}{how} found in the raw file at offset {first[i]}, "
                    "outside any decoded message"
                )
            else:
                msg = (
                    f"{sec.label}{how} found {total[i]} time(s) in the raw file (first at "
                    f"offset {first[i]}), only {inside} inside decoded messages"
                )
            out.append(Finding("secret", msg, file=path, secret=sec.number))
        self.findings += out
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
