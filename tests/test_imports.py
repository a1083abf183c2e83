"""The package's layers import each other one way only, downward: no import cycles and no
import of a higher layer, counting the imports placed inside functions (which hide a
cycle at import time but not in design)."""

import ast
from pathlib import Path

import segaudit

PACKAGE = Path(segaudit.__file__).parent

# Lowest first. A module may import its own layer and the layers before it.
LAYERS = [
    "core",
    "runs",
    "data",
    "models",
    "measure",
    "train",
    "diagnostics",
    "report",
    "workflows",
    "integrations",
    "api",
    "cli",
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the segaudit modules it imports anywhere in its source."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layer(module: str) -> int | None:
    """The index in LAYERS of `segaudit.<layer>...`; None for the package root."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every `importer -> imported` edge that goes to a higher layer."""
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if layer(name) is not None and layer(target) is not None and layer(target) > layer(name)
    )


def test_find_cycle_sees_a_hand_made_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_upward_imports_sees_a_hand_made_one():
    graph = {"segaudit.core.errors": {"segaudit.report.html"}, "segaudit.report.html": {"segaudit.core.errors"}}
    assert upward_imports(graph) == ["segaudit.core.errors -> segaudit.report.html"]


def test_every_module_sits_in_a_layer():
    for name in _modules():
        assert name == "segaudit" or name.split(".")[1] in LAYERS, f"{name}: not in a layer of {LAYERS}"


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "segaudit.report.figures" in graph["segaudit.report.pictures"]  # the walk sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_layers_import_only_downward():
    assert upward_imports(import_graph()) == []


def test_core_imports_nothing_above_it_and_figures_are_a_leaf():
    graph = import_graph()
    assert all(t.startswith("segaudit.core") for n, ts in graph.items() if n.startswith("segaudit.core.") for t in ts)
    assert graph["segaudit.report.figures"] == set()
