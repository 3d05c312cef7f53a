"""Check reports for CI: a JSON summary and a JUnit XML file (docs/ci.md)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from .checker import Checker
from .findings import Finding


def _finding_dict(f: Finding) -> dict[str, object]:
    return {k: getattr(f, k) for k in f.__slots__ if getattr(f, k) is not None}


def write_json(path: str, checker: Checker, frames: int, inputs: list[str]) -> None:
    Path(path).write_text(
        json.dumps(
            {
                "result": "fail" if checker.failed else "pass",
                "inputs": inputs,
                "messages": frames,
                "tpm_messages": checker.tpm_frames,
                "secrets": [s.label for s in checker.secrets],
                "require_encrypted": [str(r) for r in checker.requires],
                "findings": [_finding_dict(f) for f in checker.findings],
            },
            indent=2,
        )
        + "\n"
    )


def write_junit(path: str, checker: Checker, inputs: list[str]) -> None:
    cases: list[tuple[str, list[Finding]]] = [
        ("capture is not empty", [f for f in checker.findings if f.kind == "empty"]),
    ]
    for s in checker.secrets:
        cases.append(
            (
                f"secret {s.label!r} never in clear",
                [f for f in checker.findings if f.kind == "secret" and repr(s.label) in f.message],
            )
        )
    for r in checker.requires:
        cases.append(
            (
                f"{r} encrypted",
                [
                    f
                    for f in checker.findings
                    if f.kind != "secret" and f.kind != "empty" and str(r) in f.message
                ],
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
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
