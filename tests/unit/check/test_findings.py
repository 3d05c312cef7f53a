"""findings.py names its one TPM constant without importing tpm2-pytss (start-up cost)."""

from __future__ import annotations

import subprocess
import sys

from tpm2_pytss.constants import TPM2_ST

from tpmsniff.check import findings


def test_st_sessions_is_tpm2_pytss_constant():
    assert int(TPM2_ST.SESSIONS) == findings.ST_SESSIONS


def test_findings_does_not_import_tpm2_pytss():
    code = "import sys, tpmsniff.check.findings; print('tpm2_pytss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
