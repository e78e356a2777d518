"""The package's shape: no import cycles among its modules, no module using another's underscore names.

Both are read from the source with ``ast`` (nothing is imported): every
``import`` and ``from ... import`` of a ``pipeline`` module counts, relative or
absolute, at module level or inside a function (a function-level import is
still a dependency, only a later one). Imports under ``if TYPE_CHECKING:``
never run and are not counted. Importing a submodule counts as a dependency
on it and on the module named in ``from``, not on the packages above it (they
are being imported already when one of their modules runs).

ruff (lint and format) and mypy are run by ``make lint``, not here.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


@dataclass(frozen=True)
class Import:
    """One import statement of a package module: where it is and what it names."""

    module: str  # the importing module
    line: int
    target: str  # the module named (``from target import ...`` or ``import target``)
    names: tuple[str, ...]  # the names imported from it (empty for ``import target``)


def modules(package: Path) -> dict[str, tuple[Path, list[str]]]:
    """``{dotted name: (file, the package its relative imports start from)}`` of every module under ``package``."""
    out = {}
    for file in sorted(package.rglob("*.py")):
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            base = parts
        else:
            base = parts[:-1]
        out[".".join(parts)] = (file, base)
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:`` (functions and classes included)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports(package: Path) -> list[Import]:
    """Every runtime import statement of the package's modules, relative imports resolved."""
    found = []
    for name, (file, base) in modules(package).items():
        for node in _runtime_nodes(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = base[: len(base) - node.level + 1]
                    target = ".".join(prefix + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.append(Import(name, node.lineno, target, tuple(a.name for a in node.names)))
            elif isinstance(node, ast.Import):
                found.extend(Import(name, node.lineno, a.name, ()) for a in node.names)
    return found


def import_graph(package: Path) -> dict[str, dict[str, Import]]:
    """``{module: {module it imports: the first statement that does}}`` within the package."""
    mods = modules(package)
    graph: dict[str, dict[str, Import]] = {name: {} for name in mods}
    for imp in imports(package):
        submodules = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in mods]
        targets = list(submodules)
        # ``from . import store`` needs only store: the package above is being imported already
        above = imp.module == imp.target or imp.module.startswith(imp.target + ".")
        if not above or not imp.names or len(submodules) < len(imp.names):
            targets.append(imp.target)
        for target in targets:
            if target in mods and target != imp.module:
                graph[imp.module].setdefault(target, imp)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(out)


def underscore_uses(package: Path) -> list[str]:
    """``file:line: what`` for every use of another module's underscore name (imported, or as ``module._name``)."""
    mods = modules(package)
    found = []
    for imp in imports(package):
        if imp.target not in mods or imp.target == imp.module:
            continue
        for n in imp.names:
            if n.startswith("_") and not n.startswith("__") and f"{imp.target}.{n}" not in mods:
                found.append(
                    f"{mods[imp.module][0].relative_to(package.parent)}:{imp.line}: from {imp.target} import {n}"
                )
    for name, (file, base) in mods.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        bound = {}  # local name -> package module it is bound to by an import
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = base[: len(base) - node.level + 1]
                    target = ".".join(prefix + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        bound[a.asname or a.name] = f"{target}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in mods:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and bound.get(node.value.id, name) != name
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(
                    f"{file.relative_to(package.parent)}:{node.lineno}: {node.value.id}.{node.attr} ({bound[node.value.id]})"
                )
    return sorted(found)


def _describe(component: list[str], graph: dict[str, dict[str, Import]], mods) -> str:
    edges = [
        f"  {a} -> {b}  ({mods[a][0].relative_to(PACKAGE.parent)}:{graph[a][b].line})"
        for a in component
        for b in sorted(graph[a])
        if b in component
    ]
    return " <-> ".join(component) + "\n" + "\n".join(edges)


# ------------------------------------------------------------------ the checks on pipeline/


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    found = cycles(graph)
    mods = modules(PACKAGE)
    assert not found, "import cycles among pipeline modules:\n" + "\n".join(_describe(c, graph, mods) for c in found)


def test_no_module_uses_another_modules_underscore_names():
    found = underscore_uses(PACKAGE)
    assert not found, "modules using another module's private names:\n" + "\n".join(found)


def test_the_scan_sees_every_module():
    mods = modules(PACKAGE)
    assert {"pipeline", "pipeline.store", "pipeline.storage", "pipeline.cli"} <= set(mods)
    graph = import_graph(PACKAGE)
    assert "pipeline.storage" in graph["pipeline.store"]  # `from . import storage`
    assert "pipeline.storage" in graph["pipeline.report"]  # `from .storage import zarr_target`


# ------------------------------------------------------------------ the checker itself, on small packages


def _package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        file = root / "pkg" / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)
    return root / "pkg"


def test_a_function_level_import_closes_a_cycle(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from .b import f\n",
            "b.py": "def f():\n    from . import a\n    return a\n",
            "c.py": "from pkg.a import f\n",
            "sub/__init__.py": "",
            "sub/d.py": "from ..c import f\n\ndef g():\n    import pkg.sub.e\n",
            "sub/e.py": "from .d import g\n",
        },
    )
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b"], ["pkg.sub.d", "pkg.sub.e"]]


def test_type_checking_imports_and_chains_are_not_cycles(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "from . import a\n",
            "a.py": "from .b import f\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\nimport os\ndef f(): pass\n",
        },
    )
    graph = import_graph(package)
    assert cycles(graph) == []
    assert set(graph["pkg.a"]) == {"pkg.b"} and set(graph["pkg.b"]) == set()


def test_underscore_names_of_another_module_are_found(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "_hidden = 1\n__all__ = []\ndef _own(): return _hidden\n",
            "b.py": "from .a import __all__\nfrom . import _c\nfrom . import a\nx = a._hidden\n",
            "_c.py": "from .a import _own, _hidden as h\n",
        },
    )
    assert sorted(line.split(": ", 1)[1] for line in underscore_uses(package)) == [
        "a._hidden (pkg.a)",
        "from pkg.a import _hidden",
        "from pkg.a import _own",
    ]


def kind_name_comparisons(package: Path, names: tuple[str, ...]) -> list[str]:
    """``file:line`` of every comparison of a value with a job kind's name outside ``kinds/`` and ``spec/``."""
    found = []
    for file in sorted(package.rglob("*.py")):
        relative = file.relative_to(package)
        if relative.parts[0] in ("kinds", "spec"):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(o, ast.Constant) and o.value in names for o in operands):
                    found.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_kinds_and_spec_know_which_job_kinds_exist():
    from pipeline.kinds import KINDS

    names = tuple(KINDS)
    assert set(names) == {"derivatives", "sweep"}  # the registry is what the scan looks for
    assert kind_name_comparisons(PACKAGE, names) == []


def test_a_kind_switch_outside_kinds_is_found(tmp_path):
    package = tmp_path / "pkg"
    (package / "kinds").mkdir(parents=True)
    (package / "kinds" / "__init__.py").write_text('KIND = "sweep"\nif KIND == "sweep":\n    pass\n')
    (package / "store.py").write_text(
        'def unit(attrs):\n    return "cases" if attrs["kind"] == "sweep" else "samples"\n'
    )
    assert kind_name_comparisons(package, ("sweep",)) == ["store.py:2: attrs['kind'] == 'sweep'"]
