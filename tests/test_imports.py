"""The import graph of src/selma3d: no cycles, and every import points down the stage layers.

Every ``import`` / ``from ... import`` statement is read with :mod:`ast`, including the lazy
ones inside functions (they form the same cycles at run time, only later). An import names the
module it loads: ``from selma3d.io import open_reader`` depends on ``selma3d.io`` (the package's
``__init__``), ``from selma3d.io import omezarr`` on ``selma3d.io.omezarr``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "selma3d"

#: Stage subpackages, lowest first; a module may import from its own layer and those below.
#: ``augment`` and ``nets`` share a layer (neither imports the other).
LAYERS = {
    "core": 0,
    "io": 1,
    "data": 2,
    "preprocess": 3,
    "augment": 4,
    "nets": 4,
    "strategies": 5,
    "training": 6,
    "inference": 7,
    "evaluation": 8,
    "reporting": 9,
}
#: Top-level modules that may import anything (entry points, configuration).
EXEMPT = {f"{ROOT}.cli", f"{ROOT}.config", ROOT}

#: Known cycles left in place for now, as (importer, imported) edges the checks skip.
#: TODO(training): break this one in training/ (another change owns that package), then empty the set:
#: pretrain lazily imports distributed (to launch DDP workers) and distributed's worker entry point
#: lazily imports pretrain back, so training.distributed <-> training.pretrain is a cycle.
ALLOWED_EDGES: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) lies in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The selma3d modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import name``: a submodule when one is called so, else an attribute of pkg
            names = [f"{stem}.{alias.name}" if _resolve(f"{stem}.{alias.name}") not in (None, _resolve(stem))
                     else stem for alias in node.names]
        else:
            continue
        for name in names:
            if name == ROOT or name.startswith(ROOT + "."):
                target = _resolve(name)
                if target is not None and target != module:
                    found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One closed chain ``a -> b -> ... -> a`` per strongly connected component of 2+ modules
    (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan, recursive: the graph has a few dozen nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    chains = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # shortest path back to start inside the component (breadth first)
        prev: dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        end = v
                        break
                    if w not in seen:
                        seen.add(w)
                        prev[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        chain = [start]
        v = end
        while v is not None and v != start:
            chain.insert(1, v)
            v = prev.get(v)
        chains.append(chain + [start])
    return chains


def _checked_graph() -> dict[str, set[str]]:
    graph = import_graph()
    return {m: {t for t in targets if (m, t) not in ALLOWED_EDGES} for m, targets in graph.items()}


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    graph = import_graph()
    assert len(graph) > 40
    assert "selma3d.io.volume" in graph["selma3d.io.omezarr"]
    assert "selma3d.io.omezarr" in graph["selma3d.io.registry"]  # the registry dispatches to it
    assert "selma3d.training.distributed" in graph["selma3d.training.pretrain"]  # inside a function
    fake = tmp_path / "tiff.py"
    fake.write_text("from .volume import Volume\nfrom . import nifti\nfrom ..core import errors\n"
                    "def f():\n    from ..core.atomic import atomic_path\n    import selma3d.io.mha\n")
    assert _imports("selma3d.io.tiff", fake) == {"selma3d.io.volume", "selma3d.io.nifti", "selma3d.core.errors",
                                                 "selma3d.core.atomic", "selma3d.io.mha"}


def test_find_cycles_reports_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(_checked_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers():
    bad = []
    for module, targets in sorted(_checked_graph().items()):
        if module in EXEMPT:
            continue
        own = _layer(module)
        assert own is not None, f"{module}: not in a stage subpackage; add it to LAYERS or EXEMPT"
        for target in sorted(targets):
            if target in (ROOT, f"{ROOT}.config"):
                continue
            theirs = _layer(target)
            if theirs is None or theirs > own:
                bad.append(f"{module} (layer {module.split('.')[1]}) imports {target}")
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_allowed_edges_still_exist():
    """An allow-list entry whose import is gone must be removed, so the list only shrinks."""
    graph = import_graph()
    stale = sorted(e for e in ALLOWED_EDGES if e[1] not in graph.get(e[0], set()))
    assert not stale, f"remove from ALLOWED_EDGES: {stale}"


def test_io_modules_do_not_import_the_io_package():
    """Format modules import each other (``io.volume``), never ``selma3d.io`` itself: the
    package ``__init__`` is the registry that imports them."""
    graph = import_graph()
    bad = sorted(m for m in graph if m.startswith(f"{ROOT}.io.") and f"{ROOT}.io" in graph[m])
    assert not bad, f"import selma3d.io.<module>, not selma3d.io, in {bad}"
