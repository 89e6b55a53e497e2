"""The layout's rules (docs/layout.md), read from the source: layers, cycles, sizes.

Every import counts, a function's deferred one too: a cycle hidden in a function
is still a cycle for a reader. A package's ``__init__`` that an import passes
through is not counted as an import of it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"

# Lowest first: a module may import its own layer and the ones below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("app.bandit",),
    ("app.config", "app.errors", "app.roles", "app.schemas", "app.telemetry", "app.urls"),
    ("app.store",),
    ("app.service", "app.judging", "app.reads", "app.tokens", "app.sweeper", "app.zeus_import"),
    ("app.http", "app.dashboard", "app.main"),
    ("app.sim",),
    ("app.cli",),
)
MAX_TOP_LEVEL_MODULES = 12  # besides packages and __init__.py
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in APP.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> Iterator[str]:
    """The app modules ``path`` imports (``from app import x`` names module app.x)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known and name.startswith("app"):
                yield name


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set(_imports(path, known))
        # ``from app.store import jobs`` names app.store.jobs, not the package's __init__.
        packages = {n for n in found if modules[n].name == "__init__.py"}
        graph[name] = {n for n in found - packages if n != name} | {
            p for p in packages if not any(m.startswith(p + ".") for m in found)
        }
    return graph


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it")


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module != "app"
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_algorithm_imports_nothing_else_of_the_app() -> None:
    leaks = [
        f"{m} imports {t}"
        for m, targets in _graph().items()
        if m.startswith("app.bandit")
        for t in targets
        if not t.startswith("app.bandit")
    ]
    assert leaks == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_app_has_at_most_a_dozen_top_level_modules() -> None:
    top = sorted(p.name for p in APP.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("path", sorted(APP.rglob("*.py")), ids=lambda p: str(p.relative_to(APP)))
def test_no_module_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES
