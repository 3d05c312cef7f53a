"""Build the native relay: `pip install .` and `python -m build` do (setup.py's
cffi_modules names `ffibuilder`, as tpm2-pytss does), and so does
`python -m tpmsniff._native.build` (in place; `make venv`, `make native`).

cffi's API mode (cffi is already needed by tpm2-pytss, so no new toolchain): relay.c is
compiled with warnings as errors, -O2 and _FORTIFY_SOURCE=2 into
tpmsniff/_native/_relay.*.so (git-ignored). On failure: one line on stderr, exit 1; the
relay then runs in Python (--relay auto says so once).

Test builds (`--variant`, into `--out DIR`; loaded with TPMSNIFF_NATIVE=path): `faults`
adds the malloc / epoll_ctl fault injection (TPMSNIFF_FAULT_MALLOC=N,
TPMSNIFF_FAULT_EPOLL=N: the Nth call fails); `sanitize` is that under ASan and UBSan
(`make sanitize`), `tsan` under ThreadSanitizer.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARN = ["-Wall", "-Wextra", "-Werror", "-pthread"]
FLAGS = ["-O2", "-D_FORTIFY_SOURCE=2", *WARN]
DEBUG = ["-O1", "-g", "-fno-omit-frame-pointer", "-DTN_FAULTS", *WARN]
SAN = {
    "sanitize": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "tsan": ["-fsanitize=thread"],
}
VARIANTS = {
    "": (FLAGS, []),
    "faults": (DEBUG, []),
    "sanitize": (DEBUG + SAN["sanitize"], SAN["sanitize"]),
    "tsan": (DEBUG + SAN["tsan"], SAN["tsan"]),
}


def ffibuilder(variant: str = "", absolute: bool = False) -> object:
    """The cffi builder; setuptools calls it with no arguments from the project root
    (it wants relative source paths), `build` with absolute ones (cffi compiles in a
    temporary directory)."""
    import cffi

    header = (HERE / "relay.h").read_text()
    cdef = "\n".join(
        line
        for line in header.splitlines()
        if not line.startswith(("#ifndef", "#endif", "#include", "#define TPMSNIFF", "/*"))
    )
    cflags, ldflags = VARIANTS[variant]
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        "tpmsniff._native._relay",
        '#include "relay.h"',
        sources=[_path("relay.c", absolute)],
        include_dirs=[_path("", absolute)],
        extra_compile_args=cflags,
        extra_link_args=["-pthread", *ldflags],
    )
    return ffi


def _path(name: str, absolute: bool) -> str:
    here = HERE / name if name else HERE
    if absolute:
        return str(here)
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def build(variant: str = "", out: Path | None = None) -> Path:
    ffi = ffibuilder(variant, absolute=True)
    with tempfile.TemporaryDirectory(prefix="tpmsniff-native-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))  # type: ignore[attr-defined]
        dest = out if out is not None else HERE
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / built.name
        shutil.copyfile(built, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tpmsniff._native.build")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="")
    p.add_argument("--out", type=Path, help="directory (default: in place)")
    a = p.parse_args(argv)
    try:
        path = build(a.variant, a.out)
    except Exception as exc:  # compiler missing, headers missing, a warning: say which
        msg = " ".join(str(exc).split())[:300]
        print(f"tpmsniff: native relay not built: {type(exc).__name__}: {msg}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
