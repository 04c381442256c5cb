"""The package's layering: dependencies point one way, from the lowest stage to the highest.

The import graph of dnnc's modules is read from their source with `ast` (nothing is
imported), counting relative and absolute imports, at the top of a module and inside its
functions. Four rules are checked, each by a test that lists every offender:
  (a) no import cycle among dnnc's modules,
  (b) no import from a lower layer to a higher one (a layer is the first package component
      under dnnc; dnnc/__init__.py is the top and may import anything),
  (c) no module over MAX_LINES lines,
  (d) no function-local import of a dnnc module (only optional third-party dependencies are
      imported inside functions).
The checkers take any package root, so the tests at the end run them on a small synthetic
package to show that each rule catches what it should.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dnnc"
LAYERS = ("base", "te", "ir", "front", "schedule", "lower", "codegen", "runtime", "target", "driver",
          "compression", "io", "api", "training", "tools", "cli")
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. dnnc.front.graph
    target: str  # the imported dnnc module (a package stands for its __init__)
    line: int
    function: str | None  # the enclosing function's name for a function-local import
    type_only: bool  # under `if TYPE_CHECKING:`: never executed

    def show(self) -> str:
        where = f" (in {self.function}())" if self.function else ""
        kind = " (type only)" if self.type_only else ""
        return f"{self.source} -> {self.target}{where}{kind}"


def modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file under root/package (a package is named by its
    directory: pkg/te/__init__.py is pkg.te)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _blocks(node: ast.stmt):
    """The statement lists directly inside a compound statement (imports are statements, so
    the walk never needs to enter an expression)."""
    for field in ("body", "orelse", "finalbody"):
        yield getattr(node, field, None) or []
    for part in getattr(node, "handlers", None) or getattr(node, "cases", None) or []:
        yield part.body


class _Collector:
    """The imports of one module that name modules of the package, with their context."""

    def __init__(self, module: str, is_package: bool, known: set[str], package: str):
        self.module, self.known, self.package = module, known, package
        self.here = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []

    def block(self, stmts, function: str | None, type_only: bool) -> None:
        for node in stmts:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.add(self.within(alias.name), node, function, type_only)
            elif isinstance(node, ast.ImportFrom):
                for target in self.from_targets(node):
                    self.add(target, node, function, type_only)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # the outermost function names the place
                self.block(node.body, function or node.name, type_only)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                self.block(node.body, function, True)
                self.block(node.orelse, function, type_only)
            else:
                for stmts_inside in _blocks(node):
                    self.block(stmts_inside, function, type_only)

    def add(self, target: str | None, node: ast.stmt, function: str | None, type_only: bool) -> None:
        if target is not None:
            self.found.append(Import(self.module, target, node.lineno, function, type_only))

    def within(self, name: str) -> str | None:
        """The longest prefix of a dotted name that is one of the package's modules."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.known:
                return ".".join(parts[:n])
        return None

    def from_targets(self, node: ast.ImportFrom) -> list[str]:
        """The package's modules a `from ... import ...` names: `from pkg.te import affine`
        imports the module pkg.te.affine, `from pkg.te.expr import Load` the module pkg.te.expr."""
        if node.level:
            parts = self.here.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1])
            if node.module:
                base = f"{base}.{node.module}" if base else node.module
        else:
            base = node.module or ""
        if base != self.package and not base.startswith(self.package + "."):
            return []
        out = []
        for alias in node.names:
            named = f"{base}.{alias.name}"
            out.append(named if named in self.known else self.within(base) or base)
        return out


def import_graph(root: Path, package: str) -> list[Import]:
    """Every import of one of the package's modules by another, in file order."""
    files = modules(root, package)
    known = set(files)
    out: list[Import] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        c = _Collector(name, path.name == "__init__.py", known, package)
        c.block(tree.body, None, False)
        out.extend(c.found)
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """One cycle (a path that returns to its start) per strongly connected group of modules
    that import each other at run time; imports under TYPE_CHECKING never run and are left out."""
    graph: dict[str, list[str]] = {}
    for i in imports:
        if not i.type_only and i.source != i.target:
            graph.setdefault(i.source, [])
            if i.target not in graph[i.source]:
                graph[i.source].append(i.target)
    # Tarjan's strongly connected components, iteratively (deep import chains)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return [_cycle_in(g, graph) for g in groups]


def _cycle_in(group: list[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group."""
    members = set(group)
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in graph.get(v, ()):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(group)  # a strongly connected group always has one


def layer(module: str) -> str | None:
    """The layer of a module: its first component under the package (None for the package
    itself, the top)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward(imports: list[Import], layers=LAYERS) -> list[str]:
    """Each import of a higher layer by a lower one, and each module in no known layer."""
    rank = {name: k for k, name in enumerate(layers)}
    out = []
    for i in imports:
        src, dst = layer(i.source), layer(i.target)
        if src is None:
            continue  # the package's __init__ is the top: it may import every layer
        for m, lay in ((i.source, src), (i.target, dst)):
            if lay is not None and lay not in rank:
                out.append(f"{m} is in no layer (layers: {', '.join(layers)})")
        if src not in rank or (dst is not None and dst not in rank):
            continue
        if dst is None or rank[dst] > rank[src]:
            out.append(i.show())
    return sorted(set(out))


def long_modules(root: Path, package: str, limit: int = MAX_LINES) -> list[str]:
    out = []
    for name, path in modules(root, package).items():
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{name}: {n} lines")
    return out


def local_imports(imports: list[Import]) -> list[str]:
    return [f"{i.show()} at line {i.line}" for i in imports if i.function is not None]


# ----------------------------------------------------------------------------- the package

@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return import_graph(ROOT, PACKAGE)


def test_the_graph_sees_imports(graph):
    # the checks below are vacuous if the collector finds nothing
    edges = {(i.source, i.target) for i in graph}
    assert ("dnnc.front.graph", "dnnc.front.parse") in edges
    assert ("dnnc.te.stmt", "dnnc.te.affine") in edges


def test_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    found = upward(graph)
    assert not found, f"imports against the layers ({' < '.join(LAYERS)}):\n" + "\n".join(found)


def test_no_module_over_the_line_limit():
    found = long_modules(ROOT, PACKAGE)
    assert not found, f"modules over {MAX_LINES} lines:\n" + "\n".join(found)


def test_no_function_local_import_of_a_dnnc_module(graph):
    found = local_imports(graph)
    assert not found, "function-local imports of dnnc modules:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- the checkers

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def toy(tmp_path) -> Path:
    """pkg with layers base < te < api: every rule broken once, and imports that break none."""
    _write(tmp_path, {
        "pkg/__init__.py": "from .api import run\n",  # the top may import anything
        "pkg/api.py": "from .te import b\nimport pkg.base.a\n\n\ndef run():\n    import numpy\n",
        "pkg/base/__init__.py": "",
        "pkg/base/a.py": "from ..te.b import f\n",  # upward, and a cycle with te.b
        "pkg/te/__init__.py": "",
        "pkg/te/b.py": ("from typing import TYPE_CHECKING\nfrom pkg.base import a\n"
                        "if TYPE_CHECKING:\n    from ..api import run\n\n\n"
                        "def f():\n    from . import c\n"),
        "pkg/te/c.py": "x = 1\n" * 12,
    })
    return tmp_path


def test_the_collector_resolves_every_kind_of_import(toy):
    got = {(i.source, i.target, i.function, i.type_only) for i in import_graph(toy, "pkg")}
    assert got == {
        ("pkg", "pkg.api", None, False),
        ("pkg.api", "pkg.te.b", None, False),
        ("pkg.api", "pkg.base.a", None, False),
        ("pkg.base.a", "pkg.te.b", None, False),
        ("pkg.te.b", "pkg.base.a", None, False),
        ("pkg.te.b", "pkg.api", None, True),
        ("pkg.te.b", "pkg.te.c", "f", False),
    }


def test_cycles_are_found_and_type_only_imports_make_none(toy):
    assert cycles(import_graph(toy, "pkg")) == [["pkg.base.a", "pkg.te.b", "pkg.base.a"]]


def test_upward_imports_are_listed(toy):
    assert upward(import_graph(toy, "pkg"), ("base", "te", "api")) == [
        "pkg.base.a -> pkg.te.b",
        "pkg.te.b -> pkg.api (type only)",
    ]


def test_a_module_in_no_layer_is_listed(toy):
    found = upward(import_graph(toy, "pkg"), ("base", "api"))
    assert "pkg.te.b is in no layer (layers: base, api)" in found


def test_long_modules_are_listed(toy):
    assert long_modules(toy, "pkg", limit=10) == ["pkg.te.c: 12 lines"]


def test_function_local_imports_of_the_package_are_listed(toy):
    # numpy, imported inside pkg.api.run, is no module of the package
    assert local_imports(import_graph(toy, "pkg")) == ["pkg.te.b -> pkg.te.c (in f()) at line 8"]
