"""The `shared` package's import graph is a tree: no cycles, hidden inside functions or not, and
every module imports alone in a fresh interpreter (so none relies on another having run first)."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

import pytest

from tests.stack import ROOT

SHARED = ROOT / "shared"
# Dotted names below `shared`, the destinations package and its modules included.
FILES = {
    ".".join(p.relative_to(SHARED).with_suffix("").parts).removesuffix(".__init__"): p
    for p in SHARED.rglob("*.py")
    if p != SHARED / "__init__.py"
}
MODULES = sorted(FILES)


def imports_of(module: str) -> set[str]:
    """Every `shared.*` module this one imports, at any depth of its code."""
    tree = ast.parse(FILES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "shared":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("shared."):
                name = node.module.removeprefix("shared.")
                found.add(name)
                found.update(f"{name}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("shared.") for a in node.names)
    return found & set(MODULES) - {module}


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


def test_no_module_of_shared_is_over_400_lines() -> None:
    long = {m: n for m, p in FILES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_one_version_string() -> None:
    import tomllib

    from shared import __version__
    from shared.graph import USER_AGENT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    assert USER_AGENT.endswith(f"/{__version__}")
