"""Imports between fastdeit's modules run one way: no module imports, directly or through others, one that imports it.

The graph is built from the source (the AST of every module), not by importing anything:
- nodes: every module of the installed `fastdeit` package, `fastdeit.kernels` and `fastdeit.benchmarks` included;
- edges: every `import fastdeit...` / `from fastdeit... import ...` statement (absolute or relative), at module level
  AND inside functions and methods (a function-level import only delays the cycle to the first call), plus
  `importlib.import_module("fastdeit...")` with a literal name. `from package import name` is an edge to the
  submodule `package.name` when that is a module, else to the package itself.
- not edges: imports under `if TYPE_CHECKING:` (never executed), and the implicit import of a package's
  `__init__` that Python performs before any of its submodules (a package importing its own submodules is how
  packages are put together; counting those would make every package a cycle). Names looked up at run time
  (`fastdeit.__getattr__`'s lazy attributes, `importlib.import_module(variable)`) are not visible here.
A cycle of module-level imports breaks at import time depending on which module is imported first; a cycle through a
function-level import is the same layering knot, deferred. Both fail the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastdeit.benchmarks
import fastdeit.kernels
import pytest

import fastdeit

ROOTS = {
    "fastdeit": Path(fastdeit.__file__).parent,
    "fastdeit.kernels": Path(fastdeit.kernels.__file__).parent,
    "fastdeit.benchmarks": Path(fastdeit.benchmarks.__file__).parent,
}


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every .py file of the packages in ROOTS."""
    found: dict[str, Path] = {}
    for package, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int, bool]]:
    """(imported module or module.attr, line, inside a function) for every import statement of `tree`."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.extend((f"{base}.{alias.name}", node.lineno, in_function) for alias in node.names)
            out.append((base, node.lineno, in_function))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.args[0].value, node.lineno, in_function))
        function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or function)

    visit(tree, False)
    return out


def import_graph() -> dict[str, dict[str, tuple[int, bool]]]:
    """module -> {imported fastdeit module: (line, inside a function)}; see the module docstring for what counts."""
    modules = _modules()
    graph: dict[str, dict[str, tuple[int, bool]]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: dict[str, tuple[int, bool]] = {}
        for name, line, in_function in _imported_names(tree, module, path.name == "__init__.py"):
            # "from a.b import c": the submodule a.b.c when it is one, else the module a.b (c is an attribute).
            parent = name.rpartition(".")[0]
            target = name if name in modules else parent if parent in modules else None
            if target is None or target == module:
                continue
            if target not in edges or (edges[target][1] and not in_function):  # a module-level edge wins
                edges[target] = (line, in_function)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, tuple[int, bool]]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        # Shortest path back to `start` inside the component (breadth-first), for a readable report.
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in previous:
                        previous[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(previous[path[-1]])
        cycles.append(path[::-1])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, tuple[int, bool]]]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        line, in_function = graph[a][b]
        steps.append(f"{a} (line {line}{', in a function' if in_function else ''}) -> {b}")
    return "\n    ".join(steps)


def test_the_graph_sees_the_packages_and_their_imports():
    """The walk finds every package and the edges that are there (a graph with no edges finds no cycles)."""
    graph = import_graph()
    assert {"fastdeit", "fastdeit.models.deit", "fastdeit.kernels.layer_norm", "fastdeit.benchmarks.models"} <= set(
        graph
    )
    assert "fastdeit.layers" in graph["fastdeit.models.deit"]  # from fastdeit.layers import ...
    assert "fastdeit.models.pos_embed" in graph["fastdeit.models.deit"]  # from fastdeit.models.pos_embed import ...
    assert "fastdeit.kernels.layer_norm" in graph["fastdeit.ops"]
    assert graph["fastdeit.layers.backend"]["fastdeit.ops"][1]  # importlib.import_module("fastdeit.ops"), lazily


def test_find_cycles_reports_module_and_function_level_cycles():
    graph = {
        "a": {"b": (1, False)},
        "b": {"c": (2, True)},
        "c": {"a": (3, False)},
        "d": {"a": (4, False)},
    }
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert "b (line 2, in a function) -> c" in describe(["a", "b", "c", "a"], graph)
    assert find_cycles({"a": {"b": (1, False)}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between fastdeit modules:\n  " + "\n  ".join(describe(c, graph) for c in cycles)


# Which fastdeit modules each inner package may import besides its own: the layers of the house, bottom up. The
# package root (`import fastdeit`) is the public face for users; nothing inside the library imports it. fastdeit._env
# (machine facts: GPU, interpreter, cache folders) and fastdeit.text (error wording) import no fastdeit module, so any
# layer may use them.
ALLOWED_BELOW = {
    "fastdeit.layers": ("fastdeit.ops", "fastdeit.kernels", "fastdeit._env"),
    "fastdeit.models": ("fastdeit.layers", "fastdeit.constants", "fastdeit.io", "fastdeit._version", "fastdeit.text"),
    "fastdeit.training": (
        "fastdeit.models",
        "fastdeit.data",
        "fastdeit.losses",
        "fastdeit.io",
        "fastdeit.constants",
        "fastdeit._env",
        "fastdeit.text",
    ),
}


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(ALLOWED_BELOW))
def test_inner_packages_import_only_what_is_below_them(package):
    graph = import_graph()
    allowed = (package, *ALLOWED_BELOW[package])
    wrong = sorted(
        f"{module} (line {line}) imports {target}"
        for module, edges in graph.items()
        if _is_under(module, package)
        for target, (line, _) in edges.items()
        if not any(_is_under(target, a) for a in allowed)
    )
    assert not wrong, f"{package} may import only {allowed}:\n  " + "\n  ".join(wrong)
