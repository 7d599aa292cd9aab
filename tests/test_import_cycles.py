"""No import circles inside ``cogview``: the module graph, read with ``ast``, is acyclic.

Every ``import`` and ``from ... import`` counts, at module level and inside functions (lazy
imports still tie two modules together). An import resolves to the most specific module it
names: ``from cogview.training import loop`` is an edge to ``cogview.training.loop``; the parent
packages it initialises on the way are not edges. Toy packages prove the check finds cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cogview

PACKAGE_DIR = Path(cogview.__file__).resolve().parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted name: file}`` for every module of ``package`` (a folder under ``root``)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies inside; None outside the package."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names of everything ``path`` (the module ``module``) imports, at any depth."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # pkg.name is the module pkg.name if there is one, else an attribute of pkg (_resolve)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module of ``package``."""
    files = module_names(root, package)
    known = set(files)
    graph = {}
    for module, path in files.items():
        targets = (_resolve(name, known) for name in imported_names(path, module))
        graph[module] = {t for t in targets if t is not None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the package has ~100 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "\n  ".join([f"cycle of {len(component)} module(s):", *edges])


def test_cogview_has_no_import_cycles() -> None:
    graph = import_graph(PACKAGE_DIR.parent, "cogview")
    assert len(graph) > 50 and "cogview.training.loop" in graph  # the whole package was read
    found = cycles(graph)
    assert not found, "import cycles in cogview:\n" + "\n".join(_describe(graph, c) for c in found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param(  # a -> b at module level, b -> c in a function, c -> a relatively
            {
                "toy/__init__.py": "",
                "toy/a.py": "from toy import b\n",
                "toy/b.py": "def f():\n    import toy.c\n",
                "toy/c.py": "from .a import thing\n",
                "toy/d.py": "from toy.a import thing\n",  # imports into the cycle, is not in it
            },
            [["toy.a", "toy.b", "toy.c"]],
            id="three-module-cycle",
        ),
        pytest.param(  # relative imports from a subpackage, one level up, lazily
            {
                "toy/__init__.py": "",
                "toy/sub/__init__.py": "",
                "toy/sub/x.py": "def f():\n    from .. import y\n",
                "toy/y.py": "from toy.sub.x import f\n",
            },
            [["toy.sub.x", "toy.y"]],
            id="lazy-relative-cycle",
        ),
        pytest.param(
            {"toy/__init__.py": "", "toy/a.py": "import toy.a\n"},
            [["toy.a"]],
            id="self-import",
        ),
        pytest.param(  # a package and a module of it that imports the package's names
            {"toy/__init__.py": "from toy.m import f\n", "toy/m.py": "from toy import g\n"},
            [["toy", "toy.m"]],
            id="package-init-cycle",
        ),
        pytest.param(  # no cycle: a chain, imports from outside the package, a TYPE_CHECKING import
            {
                "toy/__init__.py": "",
                "toy/a.py": "import os\nfrom toy import b\n",
                "toy/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n",
                "toy/c.py": "from . import a, b\n",
            },
            [],
            id="acyclic",
        ),
    ],
)
def test_toy_cycles_are_found(tmp_path: Path, files: dict[str, str], expected: list[list[str]]) -> None:
    _write(tmp_path, files)
    assert cycles(import_graph(tmp_path, "toy")) == expected
