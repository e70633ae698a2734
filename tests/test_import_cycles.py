"""Imports inside ``samadapt`` point one way: no module reaches itself through its imports.

Every ``import`` statement counts, at module level and inside functions alike (a function-level
import hides a cycle from Python's import machinery, not from the design). An import of a package
counts as an import of its ``__init__``; ``from pkg import name`` counts as an import of the
submodule ``pkg.name`` when that is a module, and of ``pkg`` otherwise.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "samadapt"
PACKAGE = "samadapt"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``{"samadapt.models.registry": Path(...), "samadapt.models": .../__init__.py, ...}``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's imports are relative to its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, modules: set[str], package: str = PACKAGE) -> set[str]:
    """The ``samadapt`` modules that ``module`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # ``import samadapt.a.b`` runs samadapt/__init__, samadapt.a/__init__ and samadapt.a.b, but the
        # dependency that matters is the deepest existing module named.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
                if base != package and not base.startswith(package + "."):
                    continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in modules else base)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, set(modules), package) for name, path in modules.items()}


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (or with a self-loop), sorted: the
    sets of modules that all reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per tangle (:func:`tangles`), each as ``[a, b, ..., a]`` starting at the
    tangle's first module; empty when the graph is acyclic."""
    cycles = []
    for comp in tangles(graph):
        members = set(comp)
        start = comp[0]
        # shortest path from start back to start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        end = None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [start]
        v = end
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        cycles.append([start, *reversed(path[1:]), start])
    return sorted(cycles)


def test_no_import_cycles():
    graph = import_graph()
    assert "samadapt.models.registry" in graph and "samadapt" in graph
    cycles = find_cycles(graph)
    report = [
        " -> ".join(cycle) + (f"\n    (all of {comp} reach each other)" if len(comp) > len(cycle) - 1 else "")
        for cycle, comp in zip(cycles, tangles(graph))
    ]
    assert not cycles, "import cycles in samadapt (function-level imports count):\n" + "\n".join(report)


def test_function_level_and_relative_imports_are_seen(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom ..a import f\n")
    (pkg / "c.py").write_text("import pkg.sub.b\nfrom pkg.sub import nothing_here\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.sub"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"a"}}, [["a", "a"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}, [["a", "b", "a"], ["c", "d", "c"]]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}, [["a", "c", "a"]]),  # the shortest way back
    ],
)
def test_cycle_finder_on_fake_graphs(graph, expected):
    assert find_cycles(graph) == expected


def test_a_cycle_introduced_into_the_real_graph_is_found():
    """``paths`` is a leaf: were it to import the adapter store (which needs it), the test above would fail."""
    graph = import_graph()
    assert graph["samadapt.paths"] == set()
    graph["samadapt.paths"] = {"samadapt.adapter_store"}
    assert any({"samadapt.paths", "samadapt.adapter_store"} <= set(cycle) for cycle in find_cycles(graph))
