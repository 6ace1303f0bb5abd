"""The package's layers, checked from its imports with ``ast``: imports run only downward
(a module imports its own layer or lower ones) and no modules import each other in a
circle. The layer order is declared here, once; CONTRIBUTING.md explains it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = ("core", "registry", "data", "datasets", "eval", "quant", "train", "methods",
          "run", "grid", "report", "cli")
"""Bottom up. ``qbench`` itself (the package version) counts as ``core``; ``report`` reads
result files only, and only ``cli`` stands above it."""

SOURCES = {"qbench": ROOT / "qbench", "qbench.methods": ROOT / "methods",
           "qbench.datasets": ROOT / "datasets"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for the package and its two plugin folders."""
    found = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    return parts[1]


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The qbench modules that ``module`` imports, anywhere in the file (lazy imports in
    functions and type-checking imports included). ``from pkg import name`` counts as
    importing ``pkg.name`` where that is a module, else ``pkg``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    found.add(target)
                elif base in known:
                    found.add(base)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_every_module_belongs_to_a_declared_layer():
    assert {layer_of(m) for m in modules()} <= set(LAYERS)


def test_imports_run_only_downward():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = sorted(f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
                    for a, targets in graph().items() for b in targets
                    if rank[layer_of(b)] > rank[layer_of(a)])
    assert not upward, "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``edges`` as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("edges, circle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"a2"}, "a2": set(), "b": {"b"}}, True),
])
def test_the_circle_finder_finds_circles(edges, circle):
    assert (find_cycle(edges) is not None) == circle


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """A data-layer module that imports the grid is reported (the check can fail)."""
    known = {"qbench.data.x": tmp_path / "x.py", "qbench.grid.runner": tmp_path / "r.py"}
    (tmp_path / "x.py").write_text("def f():\n    from qbench.grid.runner import run_grid\n")
    assert imports_of("qbench.data.x", tmp_path / "x.py", known) == {"qbench.grid.runner"}


def test_the_code_left_out_of_the_code_version_is_imported_by_the_cli_alone():
    """code_version skips qbench/report because nothing that makes a result imports it."""
    from qbench.core.provenance import READ_ONLY_PACKAGES

    for folder in READ_ONLY_PACKAGES:
        layer = folder.split("/")[1]
        users = sorted(a for a, targets in graph().items() for b in targets
                       if layer_of(b) == layer and layer_of(a) not in (layer, "cli"))
        assert LAYERS[-2:] == (layer, "cli") and not users, users
