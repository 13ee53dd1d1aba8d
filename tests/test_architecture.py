"""The folder tree is the architecture: no import cycle between modules, and no module that holds two concepts.

import-linter (`lint-imports`, in CI) checks the layer order; what it does not check is a cycle inside a
package, which this test finds from the source alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdtemp"
MAX_LINES = 420  # "no module over ~400 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path) -> set[str]:
    """kdtemp modules imported when `path` is imported: top-level statements only (not functions, not
    TYPE_CHECKING blocks), each with the packages its import runs."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdtemp"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / candidate.replace(".", "/")
                ).is_dir()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("kdtemp")}
    importer = module_name(path)
    expanded = set()
    for target in found:
        parts = target.split(".")
        for end in range(2, len(parts) + 1):
            prefix = ".".join(parts[:end])
            # a module's own parent packages are already being imported: not an edge
            if not (importer == prefix or importer.startswith(prefix + ".")):
                expanded.add(prefix)
    return expanded


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): module_level_imports(path) for path in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_package_importing_its_plug_ins_is_not_a_cycle_but_a_registry_importing_them_back_is():
    """The torchdistill pattern (the package's __init__ imports its plug-ins) is allowed; the pattern the
    layout replaced (a registry importing, at its bottom, a plug-in that imports the registry) is not."""
    graph = import_graph()
    assert "kdtemp.data.builtin" in graph["kdtemp.data"] and "kdtemp.data.registry" in graph["kdtemp.data.builtin"]
    assert cycles({**graph, "kdtemp.data.registry": graph["kdtemp.data.registry"] | {"kdtemp.data.custom"}}) == [
        ["kdtemp.data.custom", "kdtemp.data.registry"]
    ]


def test_no_module_imports_itself_back_at_module_level():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: module_name(path))
def test_no_module_holds_two_concepts(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines: split the second concept out"
