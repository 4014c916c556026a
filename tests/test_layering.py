"""Dependence inside kasf points one way: CLIs -> training / export / runtime -> artefact format -> model and
anatomy operator -> data, geometry and conventions (README.md, Layout).

Every import of every module under kasf/ is read with ``ast``: module level and inside functions, absolute and
relative. ``import kasf.a.b`` and ``from kasf.a import b`` (b a module) depend on kasf.a.b; ``from kasf.a import
name`` (name not a module) depends on the package kasf.a, i.e. its ``__init__``. Imports of anything outside
kasf, and of the compiled ``kasf._C``, are not edges.

Package ``__init__`` files are handled so that the rules mean what Python does:
- importing ``kasf.a.b`` first runs ``kasf/__init__`` and ``kasf/a/__init__``. For the forbidden dependences
  (runtime or export reaching training, runtime reaching export) those implicit edges count, so training code
  hidden in a package ``__init__`` on the way is caught; the rule is on everything reachable, not only direct
  imports.
- for cycles they do not count: a package ``__init__`` that re-exports its submodules would otherwise form a
  cycle with each of them, although Python always finishes the parent first. Explicit imports count in full,
  so a submodule that imports from its own package's ``__init__`` while that ``__init__`` imports it is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]

# (importer prefix, forbidden prefix): no module under the first may reach a module under the second.
FORBIDDEN = (
    ("kasf.runtime", "kasf.training"),
    ("kasf.export", "kasf.training"),
    ("kasf.runtime", "kasf.export"),
)

Graph = dict[str, set[str]]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the package folder ``root`` (a package is its __init__)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imported_modules(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The package's modules that ``name`` (at ``path``) imports anywhere in its body."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    found.add(f"{base}.{alias.name}")
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def import_graph(root: Path, package: str) -> Graph:
    """Explicit imports only: module -> the modules it imports."""
    modules = module_files(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def with_parent_packages(graph: Graph) -> Graph:
    """The graph plus what Python also runs on an import: every module depends on its parent packages."""
    full = {name: set(edges) for name, edges in graph.items()}
    for name in graph:
        parts = name.split(".")
        full[name].update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in graph)
    return full


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring visited modules)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def forbidden_paths(graph: Graph, rules: Iterable[tuple[str, str]]) -> list[str]:
    """For each rule, each importer that reaches a forbidden module, with the chain of imports that does it."""
    problems = []
    for importer, forbidden in rules:
        for start in sorted(n for n in graph if _under(n, importer)):
            parent: dict[str, str | None] = {start: None}
            queue = [start]
            while queue:
                node = queue.pop(0)
                if _under(node, forbidden):
                    chain = [node]
                    while parent[chain[-1]] is not None:
                        chain.append(parent[chain[-1]])  # type: ignore[arg-type]
                    problems.append(" -> ".join(reversed(chain)))
                    break
                for target in sorted(graph.get(node, ())):
                    if target not in parent:
                        parent[target] = node
                        queue.append(target)
    return problems


# ------------------------------------------------------------------------------------------------- the package

def test_runtime_and_export_do_not_reach_what_they_must_not() -> None:
    graph = with_parent_packages(import_graph(REPO_ROOT / "kasf", "kasf"))
    assert forbidden_paths(graph, FORBIDDEN) == []


def test_no_import_cycle_among_kasf_modules() -> None:
    graph = import_graph(REPO_ROOT / "kasf", "kasf")
    assert find_cycle(graph) is None


def test_the_graph_sees_imports_inside_functions_and_the_layers_it_should() -> None:
    """Guards the checker against reading nothing: known edges of each kind are present."""
    graph = import_graph(REPO_ROOT / "kasf", "kasf")
    assert "kasf.runtime.lifter" in graph["kasf.export.cli"]  # inside run_export: export may use runtime
    assert "kasf.anatomy_op.onnx_modes" in graph["kasf.runtime.lifter"]  # inside a function
    assert "kasf.anatomy_op.features" in graph["kasf.model.anatomy"]  # module level
    assert "kasf.artefact" in graph["kasf.runtime.lifter"] and "kasf.artefact" in graph["kasf.export.onnx_export"]
    assert "kasf.checkpoint" in graph["kasf"]  # the package __init__ re-exports load_checkpoint


# ----------------------------------------------------------------------------------- the checker on a made-up tree

def _package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_flags_a_cycle_through_a_function_level_relative_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def later():\n    from . import a\n",
        "c.py": "import pkg.a\n",
    })
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b"}


def test_checker_accepts_re_exports_but_not_a_submodule_importing_its_own_package(tmp_path: Path) -> None:
    files = {"__init__.py": "from pkg.core import thing\n", "core.py": "thing = 1\n"}
    assert find_cycle(import_graph(_package(tmp_path / "ok", files), "pkg")) is None
    files["core.py"] = "from pkg import version\nthing = 1\n"
    assert find_cycle(import_graph(_package(tmp_path / "bad", files), "pkg")) == ["pkg", "pkg.core", "pkg"]


def test_checker_flags_forbidden_reach_direct_indirect_and_through_a_package_init(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "training/__init__.py": "",
        "training/data.py": "",
        "runtime/__init__.py": "",
        "runtime/direct.py": "def f():\n    from ..training.data import x\n",
        "helpers/__init__.py": "import pkg.training\n",
        "helpers/geometry.py": "",
        "runtime/indirect.py": "from pkg.helpers.geometry import y\n",
        "runtime/clean.py": "import pkg.runtime.direct as d\n",
    })
    graph = with_parent_packages(import_graph(root, "pkg"))
    problems = forbidden_paths(graph, [("pkg.runtime", "pkg.training")])
    assert "pkg.runtime.direct -> pkg.training.data" in problems
    assert "pkg.runtime.indirect -> pkg.helpers.geometry -> pkg.helpers -> pkg.training" in problems
    assert any(p.startswith("pkg.runtime.clean -> pkg.runtime.direct") for p in problems)
    assert len(problems) == 3
