"""The package is layered: no import circle between modules of ``src/hsrm``, no module too long to read.

An import inside a function is still an import: hiding it there keeps Python from failing at load
time, not the two modules from depending on each other, so every import counts (module level,
inside functions and under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "hsrm"

#: the most lines a module may have without a reason given here
MAX_LINES = 550
#: module (relative to src/hsrm) -> why it may be longer
LONG_MODULES: dict[str, str] = {}
#: circles known and owned elsewhere: the exact set of modules -> why it is still there. A circle
#: that grows, or any other, fails; so does an entry whose circle is gone (delete it then).
KNOWN_CIRCLES: dict[frozenset[str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file.

    ``from hsrm.x import y`` is an edge to ``hsrm.x.y`` where that is a module, else to ``hsrm.x``;
    relative imports resolve against the module's package. An import of ``hsrm.a.b`` is an edge to
    ``hsrm.a.b`` only: a package's ``__init__`` importing its own submodules is not a circle."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    found = set()
    for target in out:
        # ``import hsrm.a.b.c`` where only hsrm.a.b exists (c is a name): the deepest module
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _circle(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    start = component[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return " -> ".join([*reversed(path), start])
                if child not in prev:
                    prev[child] = node
                    nxt.append(child)
        frontier = nxt
    return ", ".join(component)


def test_the_checker_finds_a_circle():
    """The checker itself: a planted circle is found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _circle(["a", "b", "c"], graph) == "a -> b -> c -> a"
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_resolve_submodules_and_relative_imports(tmp_path):
    modules = _modules()
    graph = _graph()
    # sanity: the graph sees the package's real edges, including ones inside functions
    assert "hsrm.errors" in graph["hsrm.store"]
    assert all(target in modules for targets in graph.values() for target in targets)
    # relative and ``from package import submodule`` forms
    fake = tmp_path / "m.py"
    fake.write_text(
        "def f():\n    from . import store\n    from .heads import base\n    from hsrm import metrics\n"
    )
    got = _imports("hsrm.m", fake, modules)
    assert got == {"hsrm.store", "hsrm.heads.base", "hsrm.metrics"}


def test_no_import_circle_in_src():
    graph = _graph()
    found = _cycles(graph)
    circles = [
        f"{_circle(c, graph)}  (all modules of this circle: {', '.join(c)})"
        for c in found
        if frozenset(c) not in KNOWN_CIRCLES
    ]
    assert not circles, "import circles in src/hsrm:\n" + "\n".join(circles)
    gone = [sorted(k) for k in KNOWN_CIRCLES if k not in {frozenset(c) for c in found}]
    assert not gone, f"KNOWN_CIRCLES lists circles that are gone (delete them): {gone}"


def test_no_module_too_long_without_a_reason():
    long = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in LONG_MODULES:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines with no reason in LONG_MODULES: {long}"


def test_product_never_imports_research_or_benchmarks():
    """research/ (experiments) and benchmarks/ (measurements) stand on the product, never under it."""
    root = SRC.parent
    bad = []
    for folder in ("src", "tests"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                bad += [
                    f"{path.relative_to(root)}: {n}"
                    for n in names
                    if n.split(".")[0] in {"research", "benchmarks"}
                ]
    assert not bad, f"imports of research/ or benchmarks/: {bad}"
