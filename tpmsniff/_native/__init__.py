"""The native data-channel relay (relay.c), built with cffi by `make venv` (build.py).

`load()` returns the compiled module, or raises NativeUnavailable with a one-line reason.
"""

from __future__ import annotations

from typing import Any


class NativeUnavailable(Exception):
    """The native relay is not built (or cannot load) here."""


def load() -> Any:
    try:
        from . import _relay  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NativeUnavailable(
            f"native relay not built ({exc}); run `make venv` (or "
            "`python -m tpmsniff._native.build`), or use --relay python"
        ) from None
    return _relay
