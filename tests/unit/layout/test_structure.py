"""The layout's rules, checked on the source: small modules, a hub top level that names its concerns, no cycles.

A cycle is counted over every import statement, including those under ``TYPE_CHECKING`` and inside functions:
a lazy import that closes a loop still means two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("edge_protocol", "edge_agent", "hub", "fleet_simulator", "mqtt_session")
# Everything written in Python that the project ships or runs, tests included.
SOURCE_ROOTS = (*PACKAGES, "bench", "scripts", "containers", "tests")
MAX_MODULE_LINES = 400
MAX_HUB_TOP_MODULES = 12


def _python_files(roots: tuple[str, ...]) -> Iterator[Path]:
    for root in roots:
        if (ROOT / root).is_dir():
            yield from sorted((ROOT / root).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, module: str) -> set[str]:
    """Every module name an import statement anywhere in the file could load, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from pkg import mod` loads pkg.mod when mod is a module.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in _python_files(PACKAGES)}
    return {name: {n for n in _imported_names(path, name) if n in files and n != name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_cycle_finder_sees_a_cycle() -> None:
    # The check above is only worth something if the finder can report one.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_graph_follows_relative_and_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("from . import sibling\ndef f():\n    from hub.db import store\n")
    assert {"pkg.sibling", "hub.db.store"} <= _imported_names(module, "pkg.mod")


def test_no_module_over_the_line_limit() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in _python_files(SOURCE_ROOTS)
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}


def test_hub_top_level_names_few_modules() -> None:
    top = sorted(p.name for p in (ROOT / "hub").glob("*.py"))
    assert len(top) <= MAX_HUB_TOP_MODULES, top


def test_scripts_import_nothing_from_tests() -> None:
    # The demo is product: what it needs from the test support lives in scripts/ and the tests import it there.
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in _python_files(("scripts",))
        if any(name == "tests" or name.startswith("tests.") for name in _imported_names(path, _module_name(path)))
    )
    assert offenders == []
