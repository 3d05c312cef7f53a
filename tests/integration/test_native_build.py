"""`pip install .` and a wheel from `python -m build` compile the native relay (setup.py's
cffi_modules), so the default --relay auto finds it without `make venv`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration

LOADS = "from tpmsniff._native import load; m = load(); assert m.lib.tn_new; print(m.__file__)"


def _loads_from(path: Path) -> str:
    p = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(path)!r}); {LOADS}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_wheel_from_python_m_build_carries_the_relay(tmp_path):
    """sdist, then a wheel from it (as a release is built): the C sources travel in the
    sdist and the wheel holds the compiled module, which loads."""
    out = tmp_path / "dist"
    p = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith("tpmsniff/_native/_relay") and n.endswith(".so")]
    zipfile.ZipFile(wheel).extractall(tmp_path / "unpacked")
    assert str(tmp_path / "unpacked") in _loads_from(tmp_path / "unpacked")


def test_pip_install_builds_the_relay(tmp_path):
    target = tmp_path / "site"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((target / "tpmsniff" / "_native").glob("_relay*.so"))
    assert str(target) in _loads_from(target)
