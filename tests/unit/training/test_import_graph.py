"""No module of `training/` imports another that imports it back, even lazily.

The graph is read from the source with `ast` (every import statement, those inside
functions included), so a circle made of deferred imports is caught too.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[3] / "training"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the modules of the same package it imports."""
    name = package.name
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for module in modules:
        tree = ast.parse((package / f"{module}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
                # `from training import recipe` names a module too.
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[module] = {
            target.split(".")[1]
            for target in imported
            if target.startswith(f"{name}.") and target.split(".")[1] in modules
        } - {module}
    return graph


def test_training_imports_form_no_cycle() -> None:
    graph = import_graph(TRAINING)
    assert {"train_tiny", "model_card", "recipe"} <= graph.keys()
    tuple(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle


def test_a_lazy_import_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "training"
    package.mkdir()
    (package / "first.py").write_text("def f():\n    from training.second import g\n")
    (package / "second.py").write_text("from training import first\n")
    (package / "third.py").write_text("import training.first\n")
    graph = import_graph(package)
    assert graph == {"first": {"second"}, "second": {"first"}, "third": {"first"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())
