"""The package keeps the shape a reader can follow: a core, method folders over it, the command line on top.

- ``mechinterp/core/`` imports nothing outside the core;
- each method folder (``investigate``, ``meaning``, ``cards``, ``causal``, ``training``, ``attribution``)
  imports the core and itself, never another method folder;
- only the scripts and ``mechinterp/cli.py`` read argparse values, and nothing in the package imports
  ``cli``;
- there is no import cycle, counting the imports made inside functions.

The graph is read from the source with ``ast``, so an import hidden in a function counts like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "mechinterp"
METHOD_FOLDERS = ("investigate", "meaning", "cards", "causal", "training", "attribution")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            # `from mechinterp.meaning import stats` imports the submodule mechinterp.meaning.stats
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    # A package's __init__ runs on the way to any of its modules, but ours import nothing.
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def folder_of(module: str) -> str:
    parts = module.split(".")  # mechinterp.core.loading and mechinterp.core -> core; mechinterp.cli -> cli
    return parts[1] if len(parts) > 1 else module


def test_the_graph_is_read():
    graph = import_graph()
    assert "mechinterp.core.source" in graph["mechinterp.cli"]
    assert "mechinterp.meaning.stats" in graph["mechinterp.meaning.contrast"]  # `from mechinterp.meaning import stats`
    assert "mechinterp.core.encoding" in graph["mechinterp.core.pipeline"]  # an import inside a function


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers():
    wrong = []
    for module, imported in import_graph().items():
        here = folder_of(module)
        for other in imported:
            there = folder_of(other)
            if there == "cli" and here != "cli":
                wrong.append(f"{module} imports the command line ({other})")
            elif here == "core" and there != "core":
                wrong.append(f"{module} (core) imports {other}: the core imports only the core")
            elif here in METHOD_FOLDERS and there not in ("core", here):
                wrong.append(f"{module} imports {other}: a method folder imports only the core and itself")
            elif here == "cli" and there != "core":
                wrong.append(f"{module} imports {other}: the command line stands on the core only")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_folder_is_known_and_documented():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(("core", *METHOD_FOLDERS))
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))) or ""
    for folder in folders:
        assert f"{folder}/" in doc, f"the package docstring does not list {folder}/"


def test_no_argparse_namespace_below_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\bargs\.", line) or "argparse.Namespace" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "the package reads argparse values outside cli.py:\n" + "\n".join(offenders)


MAX_FUNCTION_LINES = 80  # a reader holds a whole function in view


def long_functions(paths: list[Path]) -> list[str]:
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {lines} lines")
    return long


def test_functions_are_short():
    assert not long_functions(sorted(ROOT.glob("MechInterp*.py")) + sorted(PACKAGE.rglob("*.py")))
