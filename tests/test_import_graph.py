"""The module graph of `smartflow` and `workers` has no cycle.

Every module is parsed with `ast`; every `import` / `from ... import`
counts, at module level or inside a function, except those only under
`if TYPE_CHECKING:` (they never run). `from pkg import name` is an edge to
`pkg.name` when that is a module, else to `pkg`; importing a submodule is
not counted as importing its parent package (Python runs the parent's
`__init__` first, but that is not a dependency the importer chose).

An import by a literal name (`importlib.import_module("workers.gateway")`)
is an edge too: that is how the supervisor once closed the loop
app -> supervisor -> workers.gateway -> app. A role's entry module, named in
a RoleSpec and imported through a variable, is not: nothing in `smartflow`
depends on `workers`, which is the point.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"smartflow": REPO / "src" / "smartflow", "workers": REPO / "workers"}

Graph = Mapping[str, frozenset[str]]


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under ROOTS."""
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_import_call(node: ast.AST) -> str | None:
    """The module named by `importlib.import_module("a.b")` / `__import__("a.b")`."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    if name in ("import_module", "__import__") and isinstance(first, ast.Constant) \
            and isinstance(first.value, str):
        return first.value
    return None


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements at any depth, skipping `if TYPE_CHECKING:` bodies;
    an import by a literal name (`importlib.import_module("workers.gateway")`)
    counts as an `import` of it."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        literal = _literal_import_call(node)
        if literal is not None:
            yield ast.Import(names=[ast.alias(name=literal)])
        if isinstance(node, ast.If) and _is_type_checking_guard(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    base = package_parts[: len(package_parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: set[str]) -> frozenset[str]:
    """The modules in `known` that `module` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = _resolve_from(module, is_package, node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            targets.add(submodule if submodule in known else source)
    return frozenset(t for t in targets if t in known and t != module)


def build_graph() -> Graph:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) per strongly connected
    component with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: Graph, component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module (BFS back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in component {sorted(component)}")


# -- tests ------------------------------------------------------------------------

def test_the_smartflow_and_workers_modules_import_each_other_without_a_cycle() -> None:
    cycles = find_cycles(build_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_in_smartflow_imports_workers_or_the_app_imports_the_supervisor() -> None:
    graph = build_graph()
    into_workers = sorted(
        f"{module} -> {target}" for module, targets in graph.items()
        if module.startswith("smartflow") for target in targets if target.startswith("workers")
    )
    assert into_workers == []
    supervisor_modules = {"smartflow.process.arbiter"}
    assert not graph["smartflow.app"] & supervisor_modules


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking_ones() -> None:
    graph = build_graph()
    # cli.py imports the arbiter inside _serve(); workers/gateway.py imports app at the top.
    assert "smartflow.process.arbiter" in graph["smartflow.cli"]
    assert "smartflow.app" in graph["workers.gateway"]
    # arbiter.py imports the embedded redis at run time and under TYPE_CHECKING;
    # metrics only under TYPE_CHECKING and inside functions.
    assert "smartflow.telemetry.metrics" in graph["smartflow.process.arbiter"]
    assert "smartflow.store.embedded_redis" in graph["smartflow.process.arbiter"]


def test_find_cycles_reports_a_cycle_as_a_path() -> None:
    graph = {
        "a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a", "d"}),
        "d": frozenset(), "e": frozenset({"e2"}), "e2": frozenset({"e"}),
    }
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert find_cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
