"""The import graph of the tree: no circles between files or packages, every arrow runs down the declared layers
(:data:`LAYERS`, drawn in docs/structure.md), and ``models/`` stands alone (imports nothing from ``utils/``).

Every import counts, also those inside functions (a lazy import hides a circle, it does not remove it).
"""
import ast
import os
import subprocess
import sys
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_TOP = {"data", "runs", "output", "build", "dist"}  # top-level folders of datasets and outputs

# Packages bottom first: a package imports only from layers below its own (never from a package beside it).
LAYERS = [
    ("utils.errors",),  # the project's error types
    ("utils", "utils.io", "utils.options"),  # file I/O (atomic writes, outputs, paths); the option declaration
    ("mixer_hub",),  # token mixers (their neurons are passed in)
    ("models", "utils.data"),  # architectures; datasets (neither knows the other)
    ("utils.config",),  # YAML + command line -> a checked Config
    ("utils.verify",),  # golden conformance; spikingjelly's Triton kernels on CPU (a neuron implementation)
    ("utils.training",),  # engine, run folder, checkpoints, preflight, memory plan
    ("utils.analysis",),  # the paper's analyses
    ("utils.tools",),  # operations: sweep, SLURM, doctor, data preparation, hub export
    ("train", "validate", "benchmark"),  # entry scripts
]


def _modules(root: str = ROOT) -> Dict[str, str]:
    """``{dotted module name: file}`` of every Python file of the tree (packages as their ``__init__``)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) and "venv" not in d
                         and not (rel == "." and d in SKIP_TOP))
        parts = [] if rel == "." else rel.split(os.sep)
        for f in files:
            if f.endswith(".py"):
                name = parts + ([] if f == "__init__.py" else [f[:-3]])
                if name:
                    found[".".join(name)] = os.path.join(folder, f)
    return found


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The tree's modules that ``name`` (at ``path``) imports, at any level of the file."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]

    def internal(dotted: str):
        while dotted and dotted not in modules:  # a name inside a module: the module
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(internal(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if sub in modules else internal(base))
    return {m for m in out if m and m != name}


def import_graph(root: str = ROOT) -> Dict[str, Set[str]]:
    modules = _modules(root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def import_circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One circle (``[a, b, ..., a]``) per strongly connected group of modules (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[Set[str]] = []

    def visit(v: str) -> None:
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
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    def circle(group: Set[str]) -> List[str]:  # shortest way back to the first module, breadth first
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w == start:
                        return paths[v] + [start]
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        return sorted(group)

    return [circle(g) for g in groups]


def package_of(module: str) -> str:
    """The declared package of ``module`` (``utils.training.engine`` -> ``utils.training``)."""
    parts = module.split(".")
    if parts[0] == "utils" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """The arrows between packages (tests left out: they may import anything)."""
    out: Dict[str, Set[str]] = {}
    for m, deps in graph.items():
        if package_of(m) == "tests":
            continue
        out.setdefault(package_of(m), set()).update(package_of(d) for d in deps if package_of(d) != package_of(m))
    return out


def test_no_import_circles():
    graph = import_graph()
    assert {"train", "models.common", "utils.training.engine", "utils.data.table", "tests.conftest"} <= set(graph)
    circles = import_circles(graph)
    assert not circles, "import circles (every import counts, also inside functions):\n" + "\n".join(
        "  " + " -> ".join(c) for c in circles)


def test_packages_import_only_down_the_layers():
    packages = package_graph(import_graph())
    layer = {p: i for i, names in enumerate(LAYERS) for p in names}
    unknown = sorted(set(packages) - set(layer))
    assert not unknown, f"packages without a layer (add them to LAYERS and docs/structure.md): {unknown}"
    up = sorted(f"{a} -> {b}" for a, deps in packages.items() for b in deps if layer[b] >= layer[a])
    assert not up, "imports that run up or sideways between packages:\n  " + "\n  ".join(up)
    assert not import_circles(packages)


def test_the_layer_check_fails_on_an_arrow_up():
    graph = {"utils.data.table": {"models.common"}, "models.common": set(), "utils.training.engine": {"train"}}
    packages = package_graph(graph)
    assert packages == {"utils.data": {"models"}, "models": set(), "utils.training": {"train"}}
    layer = {p: i for i, names in enumerate(LAYERS) for p in names}
    assert [(a, b) for a, deps in packages.items() for b in deps if layer[b] >= layer[a]] == \
        [("utils.data", "models"), ("utils.training", "train")]


def test_models_import_nothing_from_utils():
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] == "models"
                 for d in deps if d.split(".")[0] == "utils")
    assert not bad, "models/ must stand alone (move what it needs into models/ or pass it in):\n  " + "\n  ".join(bad)


def test_bottom_layer_imports_only_errors():
    """``utils.errors``, ``utils.options`` and ``utils.io`` sit at the bottom: every command may use them, they use
    nothing of the project above ``utils.errors``."""
    graph = import_graph()
    bottom = {m for m in graph if m in ("utils.errors", "utils.options") or m.startswith("utils.io")}
    assert {"utils.io.atomic", "utils.io.outputs", "utils.io.paths"} <= bottom
    bad = sorted(f"{m} -> {d}" for m in bottom for d in graph[m]
                 if d not in ("utils.errors", "utils") and not d.startswith("utils.io"))
    assert not bad, "the bottom layer imports only utils.errors:\n  " + "\n  ".join(bad)

def test_figures_load_matplotlib_on_first_use():
    """``utils.io.figures`` is imported by commands whose other paths draw nothing: matplotlib (and its backend
    choice) waits for :func:`pyplot`, which then writes files only (Agg)."""
    code = ("import sys, utils.io.figures as f; assert 'matplotlib' not in sys.modules; "
            "print(f.pyplot().get_backend().lower())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "svg"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "agg"


def test_the_graph_sees_function_level_imports_and_circles(tmp_path):
    """The checker itself: a lazy import inside a function closes a circle, relative imports resolve."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(str(tmp_path))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    assert import_circles(import_graph(str(tmp_path))) == []


if __name__ == "__main__":  # python tests/test_imports.py: print the circles
    for c in import_circles(import_graph()):
        print(" -> ".join(c))
