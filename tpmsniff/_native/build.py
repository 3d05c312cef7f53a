"""Build the native relay in place: `python -m tpmsniff._native.build` (run by `make venv`).

cffi's API mode (cffi is already needed by tpm2-pytss, so no new toolchain): relay.c is
compiled with warnings as errors, -O2 and _FORTIFY_SOURCE=2 into
tpmsniff/_native/_relay.*.so (git-ignored). On failure: one line on stderr, exit 1; the
relay then runs with --relay python.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror", "-pthread"]


def ffibuilder() -> object:
    import cffi

    header = (HERE / "relay.h").read_text()
    cdef = "\n".join(
        line
        for line in header.splitlines()
        if not line.startswith(("#ifndef", "#endif", "#include", "#define TPMSNIFF", "/*"))
    )
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        "tpmsniff._native._relay",
        '#include "relay.h"',
        sources=[str(HERE / "relay.c")],
        include_dirs=[str(HERE)],
        extra_compile_args=FLAGS,
        extra_link_args=["-pthread"],
    )
    return ffi


def build() -> Path:
    ffi = ffibuilder()
    with tempfile.TemporaryDirectory(prefix="tpmsniff-native-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))  # type: ignore[attr-defined]
        target = HERE / built.name
        shutil.copyfile(built, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
    return target


def main() -> int:
    try:
        path = build()
    except Exception as exc:  # compiler missing, headers missing, a warning: say which
        msg = " ".join(str(exc).split())[:300]
        print(f"tpmsniff: native relay not built: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1
    print(f"built {path.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
