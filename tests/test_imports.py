"""Imports point one way: no module of dsee imports, at any depth and from anywhere in its body (function-level
imports included), a module that imports it back; ``arch.py`` (the bottom floor) imports no other dsee module."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    """dotted name -> (file, is a package __init__)."""
    found = {}
    for path in (SRC / "dsee").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the dsee modules it imports, wherever the import statement sits.

    ``from .x import name`` counts as importing ``x.name`` when that is a module, else ``x``. Importing a
    submodule first runs its packages' ``__init__``: those count too, except the importer's own packages
    (already importing when it runs)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target not in modules:
                    continue
                graph[name].add(target)
                parts = target.split(".")
                for i in range(2, len(parts)):  # the packages on the way (not the root, not the importer's own)
                    package_name = ".".join(parts[:i])
                    if not (name == package_name or name.startswith(package_name + ".")):
                        graph[name].add(package_name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself): Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"dsee.a": {"dsee.b"}, "dsee.b": {"dsee.c"}, "dsee.c": {"dsee.a"}, "dsee.d": {"dsee.a"}}
    assert cycles(graph) == [["dsee.a", "dsee.b", "dsee.c"]]
    assert cycles({"dsee.a": {"dsee.b"}, "dsee.b": set()}) == []


def test_no_import_cycles_even_through_function_level_imports():
    graph = import_graph()
    assert "dsee.train.checkpoint" in graph["dsee.train.loop"]  # the graph sees the package
    assert cycles(graph) == []


def test_arch_is_the_bottom_floor():
    assert import_graph()["dsee.arch"] == set()
