"""The shape of the ``qgeom`` package, measured from its source with :mod:`ast` (nothing is imported).

``python scripts/import_graph.py`` prints, for the package as it is on disk:

* the import graph between qgeom modules (module level and inside functions), its cycles, and
  every import that runs back up a layer (:data:`LAYERS`);
* imports of another module's private name (``from qgeom.x import _y``);
* imports inside functions, with the reason each one gives (a ``# lazy: …`` comment);
* modules over 350 lines and functions over 60 lines.

``tests/test_layout.py`` asserts on the same report, so the package's shape is held by the
suite rather than by a reviewer's memory. ``--dot`` prints the graph in Graphviz's format.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qgeom"

#: Layers, lowest first: a module may import from its own layer or lower ones, never higher.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("qgeom.vocabulary", "qgeom.paper", "qgeom.files", "qgeom.processes", "qgeom.params", "qgeom.io", "qgeom.runtime",
     "qgeom.progress"),
    ("qgeom.quant", "qgeom.calibration", "qgeom.gptq", "qgeom.awq", "qgeom.quantizers", "qgeom.activations",
     "qgeom.models", "qgeom.data", "qgeom.train", "qgeom.tracking", "qgeom.evaluation"),
    ("qgeom.curvature", "qgeom.spectra", "qgeom.symmetry"),
    ("qgeom.experiment", "qgeom.testing"),
    ("qgeom.figures",),
    ("qgeom.commands", "qgeom.cli", "qgeom.__main__"),
)
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
LAZY_TAG = "# lazy:"  # the comment that says why an import sits inside a function


@dataclass
class Report:
    edges: dict[str, set[str]] = field(default_factory=dict)  # module → qgeom modules it imports
    private: list[str] = field(default_factory=list)
    lazy: list[tuple[str, int, str, str]] = field(default_factory=list)  # module, line, target, reason
    long_modules: list[tuple[str, int]] = field(default_factory=list)
    long_functions: list[tuple[str, str, int]] = field(default_factory=list)
    upward: list[str] = field(default_factory=list)
    cycles: list[list[str]] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return -1


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[tuple[str, str | None]]:
    """(qgeom module, imported name or None) for one import statement."""
    out: list[tuple[str, str | None]] = []
    if isinstance(node, ast.Import):
        out += [(a.name, None) for a in node.names if a.name.startswith("qgeom")]
    elif isinstance(node, ast.ImportFrom):
        src = _resolve(node, module, is_package)
        if src.startswith("qgeom"):
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.append((sub, None) if sub in known else (src, a.name))
    return out


def _function_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body (its signature, however long an option list, does not count)."""
    start = fn.body[0].lineno
    if isinstance(fn.body[0], ast.Expr) and isinstance(getattr(fn.body[0], "value", None), ast.Constant) \
            and len(fn.body) > 1:
        start = fn.body[1].lineno  # the docstring does not count either
    return fn.end_lineno - start + 1


def analyse(root: Path = ROOT) -> Report:
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    rep = Report()
    for f in files:
        mod, text = module_name(f, root), f.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        is_pkg = f.name == "__init__.py"
        rep.edges.setdefault(mod, set())
        if len(lines) > MAX_MODULE_LINES:
            rep.long_modules.append((mod, len(lines)))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _function_lines(fn) > MAX_FUNCTION_LINES:
                rep.long_functions.append((mod, fn.name, _function_lines(fn)))
        inside = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            seen: set[str] = set()
            for target, name in _targets(node, mod, is_pkg, known):
                if target != mod:
                    rep.edges[mod].add(target)
                if name and name.startswith("_") and not name.startswith("__") and target != mod:
                    rep.private.append(f"{mod}:{node.lineno} imports {target}.{name}")
                if id(node) in inside and target not in seen:
                    seen.add(target)
                    near = " ".join(lines[max(0, node.lineno - 2): node.end_lineno])
                    reason = near.split(LAZY_TAG, 1)[1].strip() if LAZY_TAG in near else ""
                    rep.lazy.append((mod, node.lineno, target, reason))
    for a, targets in rep.edges.items():
        for b in targets:
            la, lb = layer(a), layer(b)
            if la >= 0 and lb > la:
                rep.upward.append(f"{a} → {b}")
    rep.cycles = _cycles({a: {b for b in bs if b in rep.edges} for a, bs in rep.edges.items()})
    return rep


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), a package's
    ``__init__`` re-exporting its own submodules excepted (that is not a circle of logic)."""
    def package_of(m: str) -> str:
        return m.rsplit(".", 1)[0]

    g = {a: {b for b in bs if not (b.startswith(a + ".") or a.startswith(b + ".") and package_of(a) == b)}
         for a, bs in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dot", action="store_true", help="print the import graph in Graphviz's dot format")
    args = ap.parse_args()
    rep = analyse()
    if args.dot:
        print("digraph qgeom {")
        for a, bs in sorted(rep.edges.items()):
            for b in sorted(bs):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return
    n_edges = sum(len(b) for b in rep.edges.values())
    print(f"{len(rep.edges)} modules, {n_edges} import edges between them")
    print(f"cycles: {rep.cycles or 'none'}")
    print(f"upward imports: {rep.upward or 'none'}")
    print(f"private-name imports: {rep.private or 'none'}")
    print(f"modules over {MAX_MODULE_LINES} lines: {rep.long_modules or 'none'}")
    print(f"functions over {MAX_FUNCTION_LINES} lines: {rep.long_functions or 'none'}")
    unexplained = [x for x in rep.lazy if not x[3]]
    print(f"imports inside functions: {len(rep.lazy)}, {len(unexplained)} without a '{LAZY_TAG}' reason")
    for m, line, t, _ in unexplained:
        print(f"  {m}:{line} → {t}")


if __name__ == "__main__":
    main()
