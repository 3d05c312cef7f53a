"""The native relay (relay.c), built with cffi by `pip install` / `make venv` (build.py).

`load()` returns the compiled module, or raises NativeUnavailable with a one-line reason.
TPMSNIFF_NATIVE=path loads that build instead (the test builds: `build.py --variant`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

NATIVE_ENV = "TPMSNIFF_NATIVE"


class NativeUnavailable(Exception):
    """The native relay is not built (or cannot load) here."""


def load() -> Any:
    path = os.environ.get(NATIVE_ENV)
    try:
        if path:
            return _load_file(path)
        from . import _relay  # type: ignore[attr-defined]
    except (ImportError, OSError) as exc:
        raise NativeUnavailable(
            f"native relay not built ({exc}); reinstall tpmsniff (`pip install .` builds "
            "it; a C compiler and Python headers are needed), or run "
            "`python -m tpmsniff._native.build`, or use --relay python"
        ) from None
    return _relay


def _load_file(path: str) -> Any:
    import sys

    name = f"{__name__}._relay"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod
