"""Check reports for CI: a JSON summary and a JUnit XML file (docs/ci.md).

Secrets appear only by label (`secret #N (sha256:…)`). Reports are opened with
`safefile.open_private`: created 0600, never through a symlink, never another user's
file (UnsafeFile, an OSError, is raised for those).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from ..safefile import open_private
from .checker import Checker
from .findings import Finding


def _write(path: str, data: bytes) -> None:
    fd = open_private(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _finding_dict(f: Finding) -> dict[str, object]:
    return {k: getattr(f, k) for k in f.__slots__ if getattr(f, k) is not None}


def write_json(
    path: str,
    checker: Checker,
    frames: int,
    inputs: list[str],
    partial: list[str] | None = None,
    *,
    incomplete: bool = False,
) -> None:
    result = "fail" if checker.failed else "incomplete" if incomplete else "pass"
    _write(
        path,
        (
            json.dumps(
                {
                    "result": result,
                    "inputs": inputs,
                    "messages": frames,
                    "tpm_messages": checker.tpm_frames,
                    "secrets": [s.label for s in checker.secrets],
                    "sensitive": checker.sensitive is not None,
                    "require_encrypted": [str(r) for r in checker.requires],
                    "partial_inputs": partial or [],
                    "findings": [_finding_dict(f) for f in checker.findings],
                },
                indent=2,
            )
            + "\n"
        ).encode(),
    )


def write_junit(path: str, checker: Checker, inputs: list[str]) -> None:
    cases: list[tuple[str, list[Finding]]] = [
        ("capture is not empty", [f for f in checker.findings if f.kind == "empty"]),
    ]
    for s in checker.secrets:
        cases.append(
            (
                f"{s.label} never readable",
                [f for f in checker.findings if f.kind == "secret" and f.secret == s.number],
            )
        )
    for r in checker.requires:
        cases.append(
            (
                f"{r} encrypted",
                [
                    f
                    for f in checker.findings
                    if f.kind in ("not-encrypted", "weak", "not-seen") and str(r) in f.message
                ],
            )
        )
    if checker.sensitive is not None:
        cases.append(
            (
                "no sensitive value readable",
                [f for f in checker.findings if f.kind == "sensitive"],
            )
        )
    suite = ET.Element(
        "testsuite",
        name="tpmsniff check",
        tests=str(len(cases)),
        failures=str(sum(1 for _, fs in cases if fs)),
    )
    for name, fs in cases:
        case = ET.SubElement(suite, "testcase", classname="tpmsniff", name=name)
        if fs:
            fail = ET.SubElement(case, "failure", message=fs[0].text())
            fail.text = "\n".join(f.text() for f in fs)
    root = ET.Element("testsuites", name=" ".join(inputs))
    root.append(suite)
    _write(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
