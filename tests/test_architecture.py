"""The house reads in one direction: core -> methods -> report -> cli (docs/architecture.md).

Every module under ``src/hookedclip`` is parsed with ``ast``; every import is checked, also
relative ones, function-local ones and those under ``TYPE_CHECKING``:

- the core (everything but ``methods/``, ``report/``, ``cli/``) imports no methods, report or cli;
- a method (``methods/<name>.py`` or ``methods/<name>/``) imports the core, the shared method
  modules (``methods/__init__.py``, ``methods/_*.py``) and its own modules; another method only
  through that method's public package (``from hookedclip.methods import pclens``, no
  underscored names), and the methods' dependencies on each other form no cycle;
- ``report`` imports the core and methods, never ``cli``; nothing outside ``cli`` imports ``cli``;
- the modules of one method package import each other without a cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hookedclip"
LAYERS = ("methods", "report", "cli")

# Known violations, to be emptied: (importing module, imported module).
ALLOWED: set[tuple[str, str]] = set()

MAX_MODULE_LINES = 420  # "about 400": room for a docstring to grow, not for a second concept


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a module of the package)
    names: tuple[str, ...]  # names taken from ``target`` (empty: the module itself)
    where: str  # file:line

    def __str__(self) -> str:
        what = f"{self.target} ({', '.join(self.names)})" if self.names else self.target
        return f"{self.source} imports {what} at {self.where}"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src/package``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _existing(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def imports_of(module: str, path: Path, modules: dict[str, Path], package: str = PACKAGE) -> list[Import]:
    """Every import of the package made anywhere in ``path`` (ast.walk: function bodies and
    ``if TYPE_CHECKING`` blocks included), relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = module if is_package else module.rpartition(".")[0]
    shown = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
    found = []
    for node in ast.walk(tree):
        where = f"{shown}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package:
                    found.append(Import(module, _existing(alias.name, modules) or alias.name, (), where))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != package:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # ``from hookedclip.methods import pclens``: the module itself
                    found.append(Import(module, sub, (), where))
                else:
                    found.append(Import(module, _existing(base, modules) or base, (alias.name,), where))
    return found


def all_imports(src: Path = SRC, package: str = PACKAGE) -> list[Import]:
    modules = module_files(src, package)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules, package)]


# ---------------------------------------------------------------------------- the rule
def layer(module: str) -> str:
    parts = module.split(".")
    if parts[1:] == ["__main__"]:  # ``python -m hookedclip``: an entry point, like the console script
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def method_of(module: str) -> str | None:
    """The method a module belongs to (``pclens`` for ``hookedclip.methods.pclens.query``);
    None for the shared method modules (``methods/__init__.py``, ``methods/_*.py``)."""
    parts = module.split(".")
    if layer(module) != "methods" or len(parts) < 3 or parts[2].startswith("_"):
        return None
    return parts[2]


def violation(imp: Import, package: str = PACKAGE) -> str | None:
    """Why ``imp`` breaks the import rule, or None."""
    src, dst = layer(imp.source), layer(imp.target)
    if dst == "cli" and src != "cli":
        return "nothing outside cli imports cli"
    if src == "core" and dst != "core":
        return f"core modules import no {dst}"
    if src == "methods":
        if dst == "report":
            return "methods import no report"
        mine, theirs = method_of(imp.source), method_of(imp.target)
        if dst != "methods" or theirs is None or theirs == mine:
            return None
        if mine is None:
            return "the shared method modules import the core only, no method"
        public = f"{package}.methods.{theirs}"
        if imp.target != public:
            return f"a method imports another method only through its public package {public}"
        private = [n for n in imp.names if n.startswith("_")]
        if private:
            return f"{', '.join(private)} is private to {public}"
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def method_graphs(imports: list[Import]) -> tuple[dict[str, set[str]], dict[str, dict[str, set[str]]]]:
    """The methods' graph (method -> methods it imports, ALLOWED edges left out) and, per
    method, the graph of its own modules."""
    between: dict[str, set[str]] = {}
    within: dict[str, dict[str, set[str]]] = {}
    for imp in imports:
        mine, theirs = method_of(imp.source), method_of(imp.target)
        if mine is None or theirs is None:
            continue
        if mine == theirs:
            within.setdefault(mine, {}).setdefault(imp.source, set()).add(imp.target)
        elif (imp.source, imp.target) not in ALLOWED:
            between.setdefault(mine, set()).add(theirs)
    return between, within


# ---------------------------------------------------------------------------- the package
def test_every_import_follows_the_rule():
    imports = all_imports()
    assert len(imports) > 100  # the parser sees the package
    broken = [f"{imp}: {why}" for imp in imports if (why := violation(imp)) and (imp.source, imp.target) not in ALLOWED]
    assert not broken, "imports against the core -> methods -> report -> cli rule:\n" + "\n".join(broken)


def test_methods_do_not_depend_on_each_other_in_a_circle():
    imports = all_imports()
    between, _ = method_graphs(imports)
    cycle = find_cycle(between)
    if cycle:
        edges = [str(imp) for imp in imports if (method_of(imp.source), method_of(imp.target)) in zip(cycle, cycle[1:])]
        raise AssertionError(f"methods import each other in a circle: {' -> '.join(cycle)}\n" + "\n".join(edges))


def test_no_import_cycle_inside_a_method_package():
    imports = all_imports()
    _, within = method_graphs(imports)
    for method, graph in within.items():
        cycle = find_cycle(graph)
        if cycle:
            pairs = set(zip(cycle, cycle[1:]))
            edges = [str(imp) for imp in imports if (imp.source, imp.target) in pairs]
            raise AssertionError(f"import cycle in methods/{method}: {' -> '.join(cycle)}\n" + "\n".join(edges))


def test_allowed_violations_still_exist():
    """An entry of ALLOWED that no longer occurs must be removed (the list only shrinks)."""
    present = {(imp.source, imp.target) for imp in all_imports()}
    assert ALLOWED <= present, f"remove from ALLOWED: {sorted(ALLOWED - present)}"


# ---------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_resolves_relative_local_and_type_checking_imports(tmp_path):
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "core.py": "def f():\n    from .cli import main\n",
            "cli/__init__.py": "main = None\n",
            "methods/__init__.py": "",
            "methods/a/__init__.py": "from .x import y\n",
            "methods/a/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.methods.a import z\ny = 1\n",
            "methods/b.py": "from ..methods.a.x import y\nfrom pkg.methods import a\nfrom pkg.methods.a import _p\n",
            "report/__init__.py": "import pkg.cli\n",
        },
    )
    imports = all_imports(tmp_path, "pkg")
    found = {(i.source, i.target, i.names) for i in imports}
    assert ("pkg.core", "pkg.cli", ("main",)) in found  # function-local, relative
    assert ("pkg.methods.a.x", "pkg.methods.a", ("z",)) in found  # under TYPE_CHECKING
    assert ("pkg.methods.b", "pkg.methods.a.x", ("y",)) in found  # two levels up
    assert ("pkg.methods.b", "pkg.methods.a", ()) in found  # a module imported by name
    why = {(i.source, i.target, i.names): violation(i, "pkg") for i in imports}
    assert why[("pkg.core", "pkg.cli", ("main",))] == "nothing outside cli imports cli"
    assert why[("pkg.report", "pkg.cli", ())] == "nothing outside cli imports cli"
    assert "public package pkg.methods.a" in why[("pkg.methods.b", "pkg.methods.a.x", ("y",))]
    assert why[("pkg.methods.b", "pkg.methods.a", ())] is None
    assert why[("pkg.methods.b", "pkg.methods.a", ("_p",))] == "_p is private to pkg.methods.a"
    _, within = method_graphs(imports)
    assert find_cycle(within["a"]) == ["pkg.methods.a", "pkg.methods.a.x", "pkg.methods.a"]


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_formatter_escapes():
    """ruff formats everything; a ``fmt: skip``/``fmt: off`` marker would let one block drift."""
    root = Path(__file__).resolve().parents[1]
    marked = [
        f"{path.relative_to(root)}:{n}"
        for folder in ("src", "tests", "examples", "benchmarks", "docs")
        for path in (root / folder).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "# fmt: " + "skip" in line or "# fmt: " + "off" in line
    ]
    assert not marked, marked


def test_no_module_is_long():
    """One concept per file: a module past about 400 lines holds two and should be split."""
    package = Path(__file__).resolve().parents[1] / "src" / "hookedclip"
    long = {
        str(path.relative_to(package)): n
        for path in package.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (lines): {long}"
