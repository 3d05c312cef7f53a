"""The package layout is the architecture (docs/architecture.md): imports point down only,
there is no cycle, and the pytest plugin loads nothing heavy until a test uses it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tpmsniff"

# what each layer may import (besides itself)
ALLOWED = {
    "model": set(),
    "safefile": set(),
    "_native": set(),  # the C relay and its cffi build: bottom layer, like safefile
    "wireshark": set(),  # package data: the Lua post-dissector and colouring rules
    "codec": {"model"},
    "transport": {"model", "codec", "_native"},
    "inputs": {"model", "codec", "safefile"},
    "check": {"model", "codec", "safefile"},
    "sinks": {"model", "codec", "check", "safefile"},
    "pipeline": {"model", "codec", "sinks", "check", "safefile"},
    "cli": {
        "model",
        "codec",
        "transport",
        "inputs",
        "check",
        "sinks",
        "pipeline",
        "safefile",
        "_native",
    },
    "testing": {"model", "codec", "transport", "inputs", "check", "sinks", "pipeline", "cli"},
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> set[str]:
    """Layers of tpmsniff imported by a module (absolute or relative imports)."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PKG).parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - (node.level - 1)]) if node.level > 1 else list(here)
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # `from .. import x`: the names are modules of the package root
                    parts = [a.name for a in node.names]
                    out |= {p for p in parts if (PKG / p).exists() or (PKG / f"{p}.py").exists()}
                    continue
            elif node.module and node.module.startswith("tpmsniff."):
                parts = node.module.split(".")[1:]
            else:
                continue
            out.add(parts[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tpmsniff."):
                    out.add(a.name.split(".")[1])
    return out


def test_imports_point_down_only():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        layer = layer_of(path)
        if layer not in ALLOWED:
            continue  # __init__, __main__
        for dep in imported_layers(path) - {layer, "__init__"}:
            if dep not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PKG)} imports {dep}")
    assert wrong == []


def test_plugin_entry_point_imports_nothing_heavy():
    code = (
        "import sys, tpmsniff.testing.plugin; "
        "heavy = [m for m in ('tpm2_pytss', 'dpkt', 'cryptography') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def module_graph() -> dict[str, set[str]]:
    """tpmsniff module -> tpmsniff modules it imports (packages resolved to __init__)."""
    mods = {
        ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PKG.rglob("*.py")
    }
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("tpmsniff"):
                target = node.module
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                graph[name].add(sub if sub in mods else target)
    return {m: {d for d in deps if d in mods and d != m} for m, deps in graph.items()}


def test_no_import_cycle():
    graph = module_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []
