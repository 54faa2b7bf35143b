"""The package layout is the architecture: imports run one way and never in a circle.

Walks every module of ``edge_agent`` with ``ast`` (no import is executed), including imports inside
functions (a lazy import is still a dependency) but not those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_agent"

# The training side: nothing that runs at the bedside may need it.
TRAINING = "edge_agent.ml"
BEDSIDE = ("edge_agent.live", "edge_agent.protocol", "edge_agent.inference", "edge_agent.clients")
# The foundations import nothing above them (config.py is the one shared loader they may use).
FOUNDATIONS = {
    "edge_agent.core": {"edge_agent.core", "edge_agent.config"},
    "edge_agent.model": {"edge_agent.model", "edge_agent.core", "edge_agent.config"},
    "edge_agent.sim": {"edge_agent.sim", "edge_agent.core"},
    "edge_agent.protocol": {"edge_agent.protocol", "edge_agent.core", "edge_agent.config"},
    "edge_agent.clients": {
        "edge_agent.clients",
        "edge_agent.protocol",
        "edge_agent.core",
        "edge_agent.config",
    },
}
# The outermost layer: they may use anything, nothing else uses them.
OUTERMOST = ("edge_agent.tools", "edge_agent.cli", "edge_agent.__main__")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The edge_agent modules a tree imports: ``from edge_agent.x import y`` counts y when y is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edge_agent"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edge_agent"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module → the edge_agent modules it imports, for every module of the package."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {
        module_name(p): _imports(ast.parse(p.read_text(), str(p)), modules) - {module_name(p)} for p in paths
    }


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := dfs(start)):
            return found
    return None


def test_graph_covers_the_package_and_resolves_imports() -> None:
    graph = import_graph()
    assert {"edge_agent.live.agent", "edge_agent.protocol.wire", "edge_agent.ml.train"} <= set(graph)
    # Every import names a module that exists (a stale path would make the checks below vacuous).
    unknown = {(m, d) for m, deps in graph.items() for d in deps if d not in graph}
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    assert "edge_agent.protocol.wire" in graph["edge_agent.live.windower"]


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("side", BEDSIDE)
def test_bedside_never_imports_the_training_side(side: str) -> None:
    bad = {
        (m, d) for m, deps in import_graph().items() if _inside(m, side) for d in deps if _inside(d, TRAINING)
    }
    assert not bad, f"{side} imports the training side: {sorted(bad)}"


@pytest.mark.parametrize("layer", sorted(FOUNDATIONS))
def test_foundations_import_nothing_above_them(layer: str) -> None:
    allowed = FOUNDATIONS[layer]
    bad = {
        (m, d)
        for m, deps in import_graph().items()
        if _inside(m, layer)
        for d in deps
        if not any(_inside(d, a) for a in allowed) and d != "edge_agent"
    }
    assert not bad, f"{layer} may import only {sorted(allowed)}: {sorted(bad)}"


def test_nothing_imports_the_tools_or_the_cli() -> None:
    bad = {
        (m, d)
        for m, deps in import_graph().items()
        if not any(_inside(m, o) for o in OUTERMOST)
        for d in deps
        if any(_inside(d, o) for o in OUTERMOST)
    }
    assert not bad, f"only tools/ and the CLI may import tools/ or the CLI: {sorted(bad)}"


MAX_FUNCTION_LINES = 80


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method longer than ``limit`` lines, decorators excluded."""
    return [
        (n.name, n.end_lineno - n.lineno + 1)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit
    ]


def test_no_function_is_longer_than_80_lines() -> None:
    found = {
        (module_name(p), name, lines)
        for p in sorted(PACKAGE.rglob("*.py"))
        for name, lines in long_functions(ast.parse(p.read_text(), str(p)))
    }
    assert not found, f"split these into named steps: {sorted(found)}"


def test_the_checks_catch_what_they_guard() -> None:
    # The detectors themselves, on a made-up graph: a circle and a bedside → training import.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse(
        "def f():\n    from edge_agent.ml import train\nif TYPE_CHECKING:\n    import edge_agent.x\n"
    )
    assert _imports(tree, {"edge_agent.ml.train"}) == {"edge_agent.ml.train"}
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    assert long_functions(ast.parse(f"def f():\n{body}\n")) == [("f", 81)]
    assert long_functions(ast.parse(f"def f():\n{body}\n"), limit=81) == []
