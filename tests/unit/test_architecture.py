"""DESIGN.md "Layout" as tests over the import graph of worker/, state/ and devtools/, read with ast.

Every import counts: module level, inside functions and under ``if TYPE_CHECKING:`` (a cycle
through a type-only import is still a cycle of design).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "state", "devtools")

#: DESIGN.md "Layout", top to bottom: a module may import its own layer or the layers below it.
#: worker.config (the settings) sits just above the model: everything but the model and state/
#: (test_state_imports_only_the_model) may read it. The root package holds only ``__version__``.
LAYERS: dict[str, int] = {
    "worker.cli": 8,
    "worker.__main__": 8,
    "worker.service": 8,
    "worker.offline": 8,
    "worker.runtime": 8,
    "worker.stream": 7,
    "worker.sinks": 6,
    "worker.observability": 5,
    "state": 4,
    "worker.processors": 3,
    "worker.otlp": 2,
    "worker.config": 1,
    "worker.model": 0,
}
#: Matched exactly, not as a prefix: the root package module itself.
ROOT_LAYERS: dict[str, int] = {"worker": 0}

#: The only module outside devtools/ that may import it, and only inside these commands.
DEVTOOLS_CALLER = "worker.cli"
DEVTOOLS_COMMANDS = frozenset({"dev", "top", "loadgen"})


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    line: int
    #: Name of the enclosing function ("" at module or class level).
    function: str
    type_checking: bool

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        kind = " [TYPE_CHECKING]" if self.type_checking else ""
        return f"{self.source} -> {self.target} ({_path_of(self.source)}:{self.line}{where}{kind})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = project_modules()


def _path_of(module: str) -> str:
    return MODULES[module].relative_to(REPO).as_posix()


def _is_project(name: str) -> bool:
    return name.split(".", 1)[0] in PACKAGES


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Import statements of one module with their context (function, TYPE_CHECKING)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.function = ""
        self.type_checking = False
        #: (imported name, line, function, type_checking); unresolved dotted names.
        self.raw: list[tuple[str, int, str, bool]] = []

    def _add(self, name: str, node: ast.stmt) -> None:
        self.raw.append((name, node.lineno, self.function, self.type_checking))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, self.function or node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.type_checking = self.type_checking, True
        for child in node.body:
            self.visit(child)
        self.type_checking = outer
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        for alias in node.names:
            # "from pkg import module" names the module; "from module import name" the module.
            self._add(f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix, node)


@dataclass(frozen=True, slots=True)
class Graph:
    imports: tuple[Import, ...]
    #: Project-looking imports that name no module of the checkout (a stale path or a builder bug).
    unresolved: tuple[str, ...]

    def edges(self) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {module: set() for module in MODULES}
        for imp in self.imports:
            graph[imp.source].add(imp.target)
        return graph

    def from_(self, source: str) -> list[Import]:
        return [imp for imp in self.imports if imp.source == source]


def build_graph() -> Graph:
    imports: list[Import] = []
    unresolved: list[str] = []
    for module, path in MODULES.items():
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        for name, line, function, type_checking in collector.raw:
            if not _is_project(name):
                continue
            if name not in MODULES:
                unresolved.append(f"{module} imports {name} ({_path_of(module)}:{line})")
                continue
            imports.append(Import(module, name, line, function, type_checking))
    return Graph(tuple(imports), tuple(unresolved))


GRAPH = build_graph()


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with a cycle (size > 1, or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return found


def cycle_path(graph: dict[str, set[str]], component: Iterable[str]) -> list[str]:
    """One cycle through the first module of a strongly connected component, as a path back to it."""
    members = set(component)
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = previous[node]
                    return [start, *reversed(path[1:]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(members)}")


def layer(module: str) -> int | None:
    if module in ROOT_LAYERS:
        return ROOT_LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _report(title: str, offending: Iterable[object]) -> str:
    return title + ":\n  " + "\n  ".join(str(item) for item in offending)


# -- the graph builder sees what is there ---------------------------------------------------------


def test_graph_builder_finds_known_edges() -> None:
    edges = GRAPH.edges()
    assert {"worker.cli", "state.fold", "devtools.servers", "worker.model.series"} <= set(MODULES)
    # module level, "from a.b import c" naming a symbol of a module
    assert "worker.model.errors" in edges["worker.cli"]
    assert "worker.model.series" in edges["state.fold"]
    # "from pkg import module" resolves to the module
    assert "worker.processors.servicegraphs.processor" in edges["worker.processors.servicegraphs"]
    # imports inside functions, recorded with the function
    lazy = {(imp.target, imp.function) for imp in GRAPH.from_("worker.cli")}
    assert ("worker.service", "run") in lazy
    assert ("devtools.devstack", "dev") in lazy
    # external packages are not nodes
    assert all(_is_project(target) for targets in edges.values() for target in targets)
    assert len(GRAPH.imports) > 100


def test_graph_builder_resolves_relative_type_checking_and_package_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import series\n"
        "from .. import config\n"
        "import worker.otlp.batch as batch\n"
        "if TYPE_CHECKING:\n"
        "    from worker.processors import pipeline\n"
        "def f():\n"
        "    import state.fold\n"
    )
    collector = _Collector("worker.model.example", is_package=False)
    collector.visit(ast.parse(source))
    seen = {(name, function, checking) for name, _, function, checking in collector.raw}
    assert ("worker.model.series", "", False) in seen
    assert ("worker.config", "", False) in seen
    assert ("worker.otlp.batch", "", False) in seen
    assert ("worker.processors.pipeline", "", True) in seen
    assert ("state.fold", "f", False) in seen


def test_every_project_import_names_a_module() -> None:
    assert not GRAPH.unresolved, _report("imports of project modules that do not exist", GRAPH.unresolved)


def test_cycle_finder_reports_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"], ["e"]]
    assert cycle_path(graph, components[0]) == ["a", "b", "c", "a"]
    assert cycle_path(graph, components[1]) == ["e", "e"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


# -- the rules --------------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    edges = GRAPH.edges()
    cycles = [cycle_path(edges, component) for component in strongly_connected(edges)]
    details = []
    for path in cycles:
        steps = [
            next(imp for imp in GRAPH.imports if imp.source == a and imp.target == b)
            for a, b in itertools.pairwise(path)
        ]
        details.append(" -> ".join(path) + "\n    " + "\n    ".join(str(step) for step in steps))
    assert not cycles, _report("import cycles", details)


def state_outside_model(imports: Iterable[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if _within(imp.source, "state")
        and not _within(imp.target, "state")
        and not _within(imp.target, "worker.model")
    ]


def model_outside_model(imports: Iterable[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if _within(imp.source, "worker.model") and not _within(imp.target, "worker.model")
    ]


def upward(imports: Iterable[Import]) -> list[str]:
    found = []
    for imp in imports:
        source, target = layer(imp.source), layer(imp.target)
        if source is not None and target is not None and target > source:
            found.append(f"{imp}: layer {source} imports layer {target}")
    return found


def devtools_outside_dev_commands(imports: Iterable[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if _within(imp.target, "devtools")
        and not _within(imp.source, "devtools")
        and not (imp.source == DEVTOOLS_CALLER and imp.function in DEVTOOLS_COMMANDS)
    ]


def test_state_imports_only_the_model() -> None:
    offending = state_outside_model(GRAPH.imports)
    assert not offending, _report("state/ imports worker/ outside worker.model", offending)


def test_model_imports_nothing_else() -> None:
    offending = model_outside_model(GRAPH.imports)
    assert not offending, _report("worker.model imports other project modules", offending)


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if not _within(m, "devtools") and layer(m) is None]
    assert not missing, _report("modules with no layer in LAYERS (place them in DESIGN's Layout)", missing)


def test_imports_point_down_the_layers() -> None:
    offending = upward(GRAPH.imports)
    assert not offending, _report("upward imports (DESIGN.md Layout)", offending)


def test_devtools_only_from_the_dev_commands() -> None:
    offending = devtools_outside_dev_commands(GRAPH.imports)
    assert not offending, _report(
        f"devtools imported outside {DEVTOOLS_CALLER}'s {sorted(DEVTOOLS_COMMANDS)} commands", offending
    )


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("worker.stream.worker", "state.redis_store", True),
        ("worker.processors.pipeline", "state.fold", False),
        ("worker.sinks.kafka", "worker.stream.emission", False),
        ("worker.processors.pipeline", "worker.config", True),
        ("worker.config", "worker.otlp.batch", False),
        ("worker.observability.http", "worker.stream.worker", False),
        ("worker.model.series", "worker", True),
        ("worker.cli", "worker.service", True),
    ],
)
def test_layer_table(source: str, target: str, expected: bool) -> None:
    assert (layer(target) <= layer(source)) is expected  # type: ignore[operator]


def _imp(source: str, target: str, function: str = "") -> Import:
    return Import(source, target, 1, function, type_checking=False)


def test_rules_catch_what_they_forbid() -> None:
    allowed = [
        _imp("state.fold", "worker.model.series"),
        _imp("state.redis_store", "state.fold"),
        _imp("worker.model.series", "worker.model.values"),
        _imp("worker.stream.worker", "state.redis_store"),
        _imp("worker.cli", "devtools.devstack", "dev"),
        _imp("devtools.devstack", "worker.model.errors"),
    ]
    assert not state_outside_model(allowed)
    assert not model_outside_model(allowed)
    assert not upward(allowed)
    assert not devtools_outside_dev_commands(allowed)
    assert state_outside_model([_imp("state.fold", "worker.otlp.metrics_encoder")])
    assert state_outside_model([_imp("state.codec", "worker.config")])
    assert model_outside_model([_imp("worker.model.series", "worker.config")])
    assert upward([_imp("worker.observability.http", "worker.stream.worker")])
    assert upward([_imp("worker.otlp.batch", "worker.processors.pipeline")])
    assert devtools_outside_dev_commands([_imp("worker.cli", "devtools.servers")])
    assert devtools_outside_dev_commands([_imp("worker.cli", "devtools.top", "run")])
    assert devtools_outside_dev_commands([_imp("worker.service", "devtools.servers", "dev")])
    assert devtools_outside_dev_commands([_imp("state.fold", "devtools.servers")])


# -- the graph for readers: python -m tests.unit.test_architecture [--modules] ----------------------


def _group(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    return parts[0] if parts[0] != "worker" else module


def _rank(name: str) -> int:
    """Layer for ordering the printout; devtools on top."""
    return 9 if _within(name, "devtools") else (layer(name) or 0)


def describe(modules: bool = False) -> str:
    """The package graph (or every module's imports), top layer first; cycles and upward imports marked."""
    edges = GRAPH.edges()
    lines: list[str] = []
    if modules:
        for module in sorted(MODULES, key=lambda m: (-_rank(m), m)):
            lines.append(f"{module}  ->  {', '.join(sorted(edges[module] - {module})) or '-'}")
    else:
        between: dict[str, dict[str, int]] = {}
        for imp in GRAPH.imports:
            source, target = _group(imp.source), _group(imp.target)
            if source != target:
                counts = between.setdefault(source, {})
                counts[target] = counts.get(target, 0) + 1
        for group in sorted({_group(m) for m in MODULES}, key=lambda g: (-_rank(g), g)):
            ordered = sorted(between.get(group, {}).items(), key=lambda item: (-_rank(item[0]), item[0]))
            listed = ", ".join(f"{target} ({count})" for target, count in ordered)
            lines.append(f"{group}  ->  {listed or '-'}")
    cycles = [" -> ".join(cycle_path(edges, c)) for c in strongly_connected(edges)]
    lines += [f"CYCLE: {cycle}" for cycle in cycles]
    lines += [f"UPWARD: {item}" for item in upward(GRAPH.imports)]
    return "\n".join(lines)


def test_describe_prints_the_package_graph() -> None:
    lines = describe().splitlines()
    assert any(line.startswith("state  ->  worker.model (") for line in lines)
    assert any(line.startswith("worker.cli  ->  devtools (") for line in lines)
    assert "worker.model  ->  -" in lines
    assert "worker.processors.pipeline  ->  " in describe(modules=True)


if __name__ == "__main__":
    import sys

    print(describe(modules="--modules" in sys.argv[1:]))
