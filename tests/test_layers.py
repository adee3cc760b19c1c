"""Imports point one way and no modules import each other in a circle.

Every module is parsed: imports at any depth (inside functions too), modules named by string to
``importlib.import_module`` (a literal, a relative name, or ``f"{__name__}.{x}"`` over the file's own
string constants), and what a package's ``__init__`` imports when it loads, which every import of one
of its submodules runs first. The root package ``modelport`` is the facade: the top layer, which
nothing inside the package imports.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "modelport"
ROOT = "modelport"

# Lowest first. A module may import its own layer and the layers below; the facade (ROOT) sits above all.
LAYERS = {"_version": 0, "errors": 0, "dtypes": 0, "atomic": 0, "runtime": 0,
          "formats": 1, "t7": 1,                                  # bytes <-> tensors
          "models": 2,                                            # families, configs, runnable models
          "parity": 3,                                            # checks over runnable models
          "convert": 4, "diff": 4, "inspect": 4,                  # plans (convert --verify runs parity)
          "render": 5, "console": 5, "view": 5, "testing": 5,     # presentation
          "cli": 6, "batch": 6, "__main__": 6}                    # commands
TOP = max(LAYERS.values()) + 1

# Cycles being removed on their own branches (issue 21); each entry is the exact set of modules in one
# strongly connected component. Nothing else may be added here.
KNOWN_CYCLES: list[set[str]] = []     # cycles still to break, each with its reason; none now


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _dynamic(tree: ast.AST, name: str, package: str) -> list[tuple[int, str]]:
    """Modules this file names to importlib: literal or relative strings, and f"{__name__}.{x}" prefixes
    completed by the file's own string constants (a registry's ``_MODULES``, a table of names)."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and (ast.unparse(n.func).endswith("import_module") or ast.unparse(n.func) == "__import__")]
    if not calls:
        return []
    parts_of_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    strings = [(n.lineno, n.value) for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in parts_of_fstrings]
    out = []
    for line, s in strings:
        if s.startswith(f"{ROOT}."):
            target = s
        elif re.fullmatch(r"\.+[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", s):
            level = len(s) - len(s.lstrip("."))
            base = package.split(".")
            target = ".".join(base[:len(base) - level + 1] + [s.lstrip(".")])
        else:
            continue
        if _is_module(target):
            out.append((line, target))
    for call in calls:
        for arg in call.args[:1]:
            if not isinstance(arg, ast.JoinedStr) or not arg.values:
                continue
            head, rest = arg.values[0], arg.values[1:]
            if not (isinstance(head, ast.FormattedValue) and isinstance(head.value, ast.Name)
                    and head.value.id in ("__name__", "__package__")):
                continue
            prefix = name if head.value.id == "__name__" else package
            while rest and isinstance(rest[0], ast.Constant):
                prefix += rest.pop(0).value
            if len(rest) == 1:                      # one placeholder left: any constant of this file that fits
                out += [(call.lineno, prefix + s) for _, s in strings if s.isidentifier() and _is_module(prefix + s)]
    return out


def _imports(path: Path, name: str | None = None, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported modelport module) for every import in the file (at any depth, unless
    ``top_level_only``: then only what runs when the module loads)."""
    name = name or _module_name(path)
    package = _package_of(name, path)
    tree = ast.parse(path.read_text(), str(path))
    if top_level_only:
        nodes, stack = [], list(tree.body)
        while stack:                                # module level, including if/try blocks, not defs
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            nodes.append(node)
            stack += list(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != ROOT:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else base))
    if not top_level_only:
        out += _dynamic(tree, name, package)
    return out


def _layer(dotted: str) -> int | None:
    parts = dotted.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else TOP


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _needs(me: str, targets: set[str]) -> set[str]:
    """``targets`` and, for each imported from outside one of its enclosing packages, that package (its
    ``__init__`` runs first). The facade is never added: nothing is allowed to import it."""
    out = set(targets)
    for target in targets:
        parts = target.split(".")
        for i in range(2, len(parts)):
            package = ".".join(parts[:i])
            if not me.startswith(package + "."):
                out.add(package)
    out.discard(me)
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the modules it needs (see :func:`_needs`)."""
    return {m: _needs(m, {t for _, t in _imports(path)}) for m, path in _modules().items()}


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_and_module_has_a_layer():
    missing = sorted({n.split(".")[1] for n in _modules() if n != ROOT and _layer(n) is None})
    assert not missing, f"add to LAYERS: {missing}"


def test_imports_point_one_way():
    wrong = []
    for me, path in _modules().items():
        mine = _layer(me)
        for line, target in _imports(path):
            theirs = _layer(target)
            if theirs is not None and mine is not None and theirs > mine and not _known(me, target):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {me} imports {target}")
    assert not wrong, "a lower layer imports a higher one:\n" + "\n".join(wrong)


def _known(me: str, target: str) -> bool:
    return any(me in c and target in c for c in KNOWN_CYCLES)


def test_no_import_cycles():
    found = _cycles(_graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "modules that import each other (directly or through others):\n" + "\n".join(
        "  " + " <-> ".join(sorted(c)) for c in new)


def test_known_cycles_are_still_there():
    """An entry in KNOWN_CYCLES that no longer matches a cycle is removed, not left to excuse a new one."""
    found = _cycles(_graph())
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert not stale, f"remove from KNOWN_CYCLES: {stale}"


def test_nothing_imports_the_facade():
    wrong = [f"{me} imports {target}" for me, path in _modules().items() if me != ROOT
             for _, target in _imports(path) if target == ROOT]
    assert not wrong, "the root package is the facade; import the module that defines the name:\n" + "\n".join(wrong)


# --- the check itself ---------------------------------------------------------------------------------

def test_the_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "x.py"
    probe.write_text("import json\n\ndef f():\n    if True:\n        from ..convert import layouts\n")
    assert _imports(probe, "modelport.formats.x") == [(5, "modelport.convert.layouts")]
    assert _layer("modelport.convert.layouts") > _layer("modelport.formats.x")
    assert _imports(probe, "modelport.formats.x", top_level_only=True) == []


def test_the_check_sees_importlib_names(tmp_path):
    registry = tmp_path / "__init__.py"
    registry.write_text('import importlib\n_MODULES = ("hf", "nope")\n'
                        'def load(m):\n    return importlib.import_module(f"{__name__}.{m}")\n')
    assert _imports(registry, "modelport.formats") == [(4, "modelport.formats.hf")]
    (tmp_path / "root").mkdir()
    facade = tmp_path / "root" / "__init__.py"
    facade.write_text('import importlib\n_LAZY = {"a": (".convert", "convert")}\n'
                      'def get(m):\n    return importlib.import_module(m, __name__)\n')
    assert _imports(facade, ROOT) == [(2, "modelport.convert")]


def test_the_check_counts_the_package_an_import_loads():
    # errors importing atomic.interrupt loads atomic/__init__.py, which imports errors: a cycle
    assert _needs("modelport.errors", {"modelport.atomic.interrupt"}) == {"modelport.atomic.interrupt", "modelport.atomic"}
    assert _needs("modelport.atomic.x", {"modelport.atomic.interrupt"}) == {"modelport.atomic.interrupt"}
    assert _needs("modelport.cli", {"modelport.models.families.llama"}) == {
        "modelport.models.families.llama", "modelport.models.families", "modelport.models"}


def test_the_check_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_facade_is_the_top_layer():
    assert _layer(ROOT) == TOP > max(LAYERS.values())
    assert _layer("modelport.cli") < TOP
