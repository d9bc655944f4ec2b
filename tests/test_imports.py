"""Imports run one way: no cycle among widthkit's modules (module-level imports, read with ``ast``).

Function-local imports are not counted: they are kept for optional or heavy dependencies.  A package importing
its own submodules (``widthkit/data/__init__.py`` -> ``widthkit.data.task``) is not a cycle back to the package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import widthkit

ROOT = Path(widthkit.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level(body: list[ast.stmt]):
    """Import statements that run when the module is imported (not in functions, classes or TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _top_level(block)


def import_graph() -> dict[str, set[str]]:
    """module -> widthkit modules it imports at module level."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _top_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import widthkit.x.y` names a module; attributes fall back to it
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_module_level_imports_only():
    g = import_graph()
    assert "widthkit.errors" in g["widthkit.validate"]
    assert "widthkit.data.registry" in g["widthkit.data.task"]
    assert "widthkit.models.registry" in g["widthkit.models.timm_models"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_library_never_imports_the_cli():
    """Only ``widthkit.cli`` and ``widthkit.commands.*`` import ``widthkit.commands`` (at any depth)."""
    mods = _modules()
    offenders = []
    for mod, path in mods.items():
        if mod == "widthkit.cli" or mod.startswith("widthkit.commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [("." * node.level) + (node.module or "")] if isinstance(node, ast.ImportFrom) else []
            if any("commands" in n.split(".") or n.lstrip(".").startswith("commands") for n in names):
                offenders.append(mod)
    assert not offenders, offenders
