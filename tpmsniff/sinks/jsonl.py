"""JSON Lines: one object per message (schema in docs/jsonl.md)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, TextIO

from ..model import Direction, Fields, Frame, SessionFacts, TpmInfo, attrs_text
from ..safefile import open_private
from .base import BaseSink, SinkContext, check_writable


def frame_to_dict(f: Frame, file: str | None = None) -> dict[str, Any]:
    d = _head(f, file)
    if f.tpm is not None:
        d.update(_tpm_part(f.tpm, f.direction))
    elif f.ctrl is not None:
        d["command"] = f"CMD_{f.ctrl.name}"
        d["ctrl_cmd"] = f.ctrl.cmd
        d["fields"] = {k: v for k, v in f.ctrl.fields.items()}
        if f.ctrl.result is not None:
            d["rc"] = f.ctrl.result
        d["param"] = "n/a"
    else:
        d["param"] = "n/a"
    if f.error:
        d["error"] = f.error
    return d


def _head(f: Frame, file: str | None) -> dict[str, Any]:
    """What is the frame's own: where it is, when, its bytes."""
    d: dict[str, Any] = {
        "file": file,
        "frame": f.seq,
        "stream": f.conn,
        "channel": str(f.channel),
        "direction": str(f.direction),
        "ts": round(f.ts, 6),
        "framing": str(f.framing),
        "size": len(f.raw),
        "hex": f.raw.hex(),
    }
    if f.locality is not None:
        d["locality"] = f.locality
    return d


def _tpm_part(t: TpmInfo, direction: Direction) -> dict[str, Any]:
    """What follows from the decode alone (the same for every frame sharing it)."""
    d: dict[str, Any] = {"cc": t.cc, "command": t.name}
    if direction is Direction.RESPONSE:
        d["rc"] = t.code
        d["rc_text"] = t.rc_text
    d["handles"] = [f"0x{h:08x}" for h in t.handles]
    d["sessions"] = [
        {
            "handle": None if s.handle is None else f"0x{s.handle:08x}",
            "attributes": attrs_text(s.attributes),
            "password": s.is_password,
            **({"facts": _facts(s.facts)} if s.facts is not None else {}),
        }
        for s in t.sessions
    ]
    d["param"] = str(t.param.verdict)
    if t.param.type_name:
        d["param_type"] = t.param.type_name
    if t.param.strength:
        d["strength"] = t.param.strength
    if t.param.proof:
        d["proof"] = t.param.proof
    if t.param.plaintext:
        d["plaintext"] = t.param.plaintext
    if t.param.note:
        d["note"] = t.param.note
    if t.param.recovered is not None:
        d["recovered_hex"] = t.param.recovered.hex()
    if t.header_only:
        d["header_only"] = True
    if t.fields is not None:
        d["fields"] = fields_to_dict(t.fields)
    return d


_SEP = (",", ":")
_TPM_JSON_MAX = 512
# decode -> its JSON members: the codec hands out one (frozen) TpmInfo for every repeat
# of a message, so its text is made once; the entry keeps the TpmInfo, so its id is not
# reused while it is here
_tpm_json: dict[tuple[int, Direction], tuple[TpmInfo, str]] = {}


def frame_line(f: Frame, file: str | None = None) -> str:
    """json.dumps(frame_to_dict(f, file)) (compact), with the decode's part made once
    per distinct decode (tests/unit/sinks/test_jsonl.py: equal on every recording)."""
    t = f.tpm
    if t is None:
        return json.dumps(frame_to_dict(f, file), separators=_SEP)
    key = (id(t), f.direction)
    hit = _tpm_json.get(key)
    if hit is None or hit[0] is not t:
        if len(_tpm_json) >= _TPM_JSON_MAX:
            _tpm_json.clear()
        hit = (t, json.dumps(_tpm_part(t, f.direction), separators=_SEP)[1:-1])
        _tpm_json[key] = hit
    head = json.dumps(_head(f, file), separators=_SEP)
    tail = ',"error":' + json.dumps(f.error) if f.error else ""
    return f"{head[:-1]},{hit[1]}{tail}}}"


def fields_to_dict(fs: Fields) -> dict[str, Any]:
    """`{"handles": {NAME: VALUE}, "parameters": {NAME: VALUE}}` (docs/jsonl.md)."""
    d: dict[str, Any] = {
        "handles": {h.name: h.json_value() for h in fs.handles},
        "parameters": {p.name: p.json_value() for p in fs.parameters},
    }
    recovered = [p.name for p in fs.parameters if p.recovered]
    if recovered:
        d["recovered"] = recovered
    encrypted = [p.name for p in fs.parameters if p.encrypted]
    if encrypted:
        d["encrypted"] = encrypted
    return d


def _facts(f: SessionFacts) -> dict[str, Any]:
    return {
        "type": f.type,
        "origin": f.origin,
        "salted": f.salted,
        "bound": f.bound,
        "symmetric": f.symmetric,
        "auth_hash": f.auth_hash,
        "salt_key": f.salt_key,
        **({"policy": f.policy} if f.policy else {}),
    }


class JsonlSink(BaseSink):
    title = "JSON Lines output"
    formats = ("jsonl",)

    @classmethod
    def add_options(cls, group: argparse._ArgumentGroup, live: bool) -> None:
        if live:  # offline: `decode --output jsonl`
            group.add_argument("--jsonl", metavar="FILE", help="write one JSON object per message")

    @classmethod
    def check_options(cls, args: argparse.Namespace, live: bool) -> None:
        if live and args.jsonl:
            check_writable(args.jsonl)

    @classmethod
    def from_options(cls, args: argparse.Namespace, ctx: SinkContext) -> JsonlSink | None:
        if not ctx.live:
            return cls(out=ctx.text, flush=False) if args.output in cls.formats else None
        return cls(args.jsonl) if args.jsonl else None

    def __init__(
        self,
        path: str | None = None,
        out: TextIO | None = None,
        file: str | None = None,
        flush: bool = True,
    ):
        """flush: at every flush() (live: after each batch, so a reader sees it at once);
        offline leaves it to the end."""
        self._flush = flush
        self.path = path
        if out is None:
            assert path is not None
            out = self._open(append=False)
            self._own = True
        else:
            self._own = False
        self.out = out
        self.file = file

    def _open(self, append: bool) -> TextIO:
        """0600, no symlink followed, only our own regular file (docs/threat-model.md)."""
        assert self.path is not None
        return os.fdopen(open_private(self.path, append=append), "w", encoding="utf-8")

    def control(self, what: str) -> None:
        if what.startswith("input "):  # offline: the file the next frames come from
            self.file = what.removeprefix("input ")
        elif what == "reopen" and self._own:  # SIGHUP: logrotate moved the file away
            self.out.close()
            self.out = self._open(append=True)

    def frame(self, f: Frame) -> None:
        self.out.write(frame_line(f, self.file) + "\n")

    def flush(self) -> None:
        if self._flush:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()
        if self._own:
            self.out.close()
