"""The `shared` package's import graph is a tree: no cycles, hidden inside functions or not, and
every module imports alone in a fresh interpreter (so none relies on another having run first)."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

import pytest

from tests.stack import ROOT

MODULES = sorted(p.stem for p in (ROOT / "shared").glob("*.py") if p.stem != "__init__")


def imports_of(module: str) -> set[str]:
    """Every `shared.*` module this one imports, at any depth of its code."""
    tree = ast.parse((ROOT / "shared" / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "shared":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("shared."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("shared."))
    return found & set(MODULES)


def test_the_import_graph_of_shared_has_no_cycle() -> None:
    graph = {module: imports_of(module) for module in MODULES}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")
    assert "auth" in graph
    assert "settings" in graph["auth"]
    assert not graph["settings"] & {"auth", "certificate", "webhook"}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import shared.{module}"], cwd=ROOT, check=True, timeout=60
    )
