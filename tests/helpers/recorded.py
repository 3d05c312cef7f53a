"""The ESAPI captures recorded from real runs (tests/data/esapi-*.pcapng, made with
helpers/scenarios.py through a tpmsniff daemon) and `tpmsniff check` run in-process on them."""

from __future__ import annotations

import base64
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from tpmsniff.cli.check import main as check_main
from tpmsniff.codec.annotate import Annotator
from tpmsniff.inputs import frames_from_input
from tpmsniff.model import Direction

DATA = Path(__file__).resolve().parents[1] / "data"


def cap(kind: str) -> str:
    return str(DATA / f"esapi-{kind}.pcapng")


def frames(path: str):
    return list(frames_from_input(path, Annotator()))


def last(fs, name: str, direction: Direction):
    hits = [f for f in fs if f.name == name and f.direction is direction and f.tpm.param.size]
    assert hits, f"no {name} {direction}"
    return hits[-1]


def check(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = check_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def every_encoding(value: bytes) -> list[bytes]:
    return [value, value.hex().encode(), value.hex().upper().encode(), base64.b64encode(value)]
