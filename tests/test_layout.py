"""The boundary between the scripts and the package stays where it was drawn.

Argparse lives in the scripts and ``mechinterp/cli.py``; the package takes typed options. Chapter
scripts stay readable top to bottom: no function in them is longer than a screenful.
"""

from __future__ import annotations

import ast
import re

from tests.helpers import ROOT

MAX_SCRIPT_FUNCTION_LINES = 80


def test_no_argparse_namespace_below_cli():
    offenders = []
    for path in sorted((ROOT / "mechinterp").glob("*.py")):
        if path.name == "cli.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\bargs\.", line) or "argparse.Namespace" in line:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "the package reads argparse values outside cli.py:\n" + "\n".join(offenders)


def test_library_modules_do_not_import_the_command_line():
    for path in sorted((ROOT / "mechinterp").glob("*.py")):
        if path.name == "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "mechinterp.cli", f"{path.name} imports mechinterp.cli"
                assert not (node.module == "mechinterp" and any(a.name == "cli" for a in node.names)), path.name


def test_script_functions_are_short():
    long = []
    for path in sorted(ROOT.glob("MechInterp*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_SCRIPT_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} has {lines} lines")
    assert not long, "\n".join(long)
