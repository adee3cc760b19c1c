"""The TorchScript source inside an archive (``<prefix>/code/**.py``), read as text and never run.

Two readers, neither imports torch:

- :func:`module_classes` finds each class's ``__parameters__`` and ``__buffers__`` lists, which say
  which of a module's attributes ``state_dict()`` reports. torch's printer writes them on one line each
  right below ``class Name(Module):``; the list is parsed with :func:`ast.literal_eval`.
- :func:`scan` walks the code with :mod:`ast` before ``torch.jit.load`` is allowed to compile it, and
  lists what makes loading or running it unsafe: a ``__setstate__`` / ``__getstate__`` (``torch.jit.load``
  runs it while loading), a custom class (``torch.classes``), and any call or reference that is not on
  an allow-list: the operator names ``ops`` (the aten and prim operators torch registers, given by the
  caller, without file, storage-mapping and remote operators), the archive's own classes, functions and
  methods, and the builtins TorchScript prints. Anything else (``open``, ``torch.from_file``,
  ``ops.aten.save``, ``ops.<other library>.*``) is a finding.
"""

from __future__ import annotations

import ast
import re

MAX_CODE = 16 << 20          # bytes of code read at most (real exports hold well under 1 MiB)
MAX_LIST = 1 << 20           # characters of one __parameters__ / __buffers__ line

# Names of operators that read or write files, map storages, spawn work elsewhere or exist for tests:
# refused even though torch registers them as aten / prim operators.
DENIED_OPS = re.compile(r"file|save|load|mmap|share|storage|^set_?$|rpc|fork|wait|^_test|thread|sleep|^_?print$")

# Builtins TorchScript's printer writes as bare calls (its own helpers and the Python ones it supports).
BUILTINS = frozenset({
    "annotate", "unchecked_cast", "uninitialized", "isinstance", "getattr", "hasattr", "len", "range", "enumerate",
    "zip", "int", "float", "bool", "str", "complex", "list", "tuple", "dict", "min", "max", "abs", "round", "divmod",
    "all", "any", "sum", "sorted", "ord", "chr", "hex", "oct", "bin", "hash", "print", "iter", "next", "reversed",
    "Exception", "AssertionError", "ValueError", "RuntimeError", "TypeError", "IndexError", "KeyError",
    "NotImplementedError", "StopIteration", "ZeroDivisionError", "StopIteration",
})
HOOKS = ("__setstate__", "__getstate__")
_CLASS = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\((\w*)\):")
_LIST = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$")


def qualname(member: str, prefix: str) -> str | None:
    """``<prefix>code/__torch__/a/b.py`` -> ``__torch__.a.b`` (None for other members)."""
    rest = member[len(prefix):] if member.startswith(prefix) else None
    if rest is None or not rest.startswith("code/") or not rest.endswith(".py"):
        return None
    return rest[len("code/"):-len(".py")].replace("/", ".")


def module_classes(texts: dict[str, str]) -> dict[str, tuple[list[str], list[str]]]:
    """``{qualified class name: (parameter names, buffer names)}`` for the classes that are modules.
    ``texts``: ``{module qualname (``__torch__.a.b``): source}``."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for module, text in texts.items():
        current = None
        for line in text.splitlines():
            m = _CLASS.match(line)
            if m:
                current = f"{module}.{m.group(1)}" if m.group(2) == "Module" else None
                if current:
                    out[current] = ([], [])
                continue
            if current is None:
                continue
            if len(line) > MAX_LIST and line.startswith(("  __parameters__", "  __buffers__")):
                raise ValueError(f"{module}: class {current.rsplit('.', 1)[1]} lists more than {MAX_LIST:,} "
                                 "characters of tensor names")
            m = _LIST.match(line)
            if m:
                try:
                    names = ast.literal_eval(m.group(2))
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    names = None
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError(f"{module}: class {current.rsplit('.', 1)[1]} lists {m.group(1)} "
                                     f"as {m.group(2)[:60]!r}, not a list of names")
                out[current][0 if m.group(1) == "__parameters__" else 1].extend(names)
    return out


def _dotted(node) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _annotations(tree) -> set[int]:
    """ids of the nodes inside type annotations (they name types, and are not run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        ann = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            ann.append(node.returns)
            a = node.args
            ann += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs]
            ann += [x.annotation for x in (a.vararg, a.kwarg) if x is not None]
        elif isinstance(node, ast.AnnAssign):
            ann.append(node.annotation)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("annotate", "unchecked_cast", "isinstance") and node.args:
            ann.append(node.args[0] if node.func.id != "isinstance" else (node.args[1] if len(node.args) > 1 else None))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "__annotations__":
            pass
        for a in ann:
            if a is not None:
                skip.update(id(n) for n in ast.walk(a))
    for node in ast.walk(tree):         # class-level ``__annotations__["0"] = <type>``
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                                                and t.value.id == "__annotations__" for t in node.targets):
            skip.update(id(n) for n in ast.walk(node.value))
    return skip


def scan(texts: dict[str, str], ops: frozenset[str] | set[str]) -> list[str]:
    """What makes the program unsafe to load or run, one short phrase each (empty: nothing found).
    ``texts``: ``{module qualname: source}``; ``ops``: the operator names torch registers (aten and prim)."""
    findings: list[str] = []
    allowed = {o for o in ops if not DENIED_OPS.search(o)}
    trees: dict[str, ast.Module] = {}
    for module, text in texts.items():
        try:
            trees[module] = ast.parse(text, filename=module)
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
            findings.append(f"code that cannot be read ({module}: {type(exc).__name__})")
    defined: set[str] = set()          # the archive's own classes and functions (qualified names)
    packages: set[str] = set()         # the modules and packages holding them
    methods: set[str] = set()          # names of the archive's methods
    for module, tree in trees.items():
        parts = module.split(".")
        packages.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                defined.add(f"{module}.{node.name}")
            if isinstance(node, ast.ClassDef):
                methods.update(n.name for n in node.body if isinstance(n, ast.FunctionDef))
    for module, tree in trees.items():
        try:
            findings += _scan_tree(module, tree, allowed, (defined, packages), methods)
        except RecursionError:
            findings.append(f"code nested too deeply to read ({module})")
    seen: set[str] = set()
    return [f for f in findings if not (f in seen or seen.add(f))]


def _scan_tree(module, tree, allowed, defined, methods) -> list[str]:
    found = []
    skip = _annotations(tree)
    local: set[str] = set()             # names bound by assignments, arguments, loops (local values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local.add(node.id)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in HOOKS:
            found.append(f"a {node.name} method ({module})")
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Global, ast.Nonlocal, ast.Lambda, ast.AsyncFunctionDef,
                             ast.Await, ast.Yield, ast.YieldFrom, ast.With, ast.AsyncWith)):
            found.append(f"a Python {type(node).__name__.lower()} statement, which TorchScript does not write ({module})")
        if id(node) in skip:            # a type: only a custom class (run by C++ code on load) is a finding
            d = _dotted(node) if isinstance(node, ast.Attribute) else None
            if d and (d.startswith("torch.classes.") or d.startswith("__torch__.torch.classes.")):
                found.append(f"a custom class ({d})")
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            d = _dotted(node)
            if d is not None:
                problem = _reference(d, allowed, defined)
                if problem:
                    found.append(problem)
        elif isinstance(node, ast.Call):
            problem = _call(node.func, allowed, defined, methods, local)
            if problem:
                found.append(problem)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in ("open", "eval", "exec", "compile", "__import__"):
            found.append(f"a reference to {node.id} ({module})")
    return found


def _reference(d: str, allowed, defined) -> str | None:
    """A dotted name rooted at ``torch``, ``ops`` or ``__torch__`` that is not allowed (other roots are values)."""
    parts = d.split(".")
    root = parts[0]
    if root == "torch" and len(parts) >= 2:
        if parts[1] == "ops":
            parts = parts[1:]
            root = "ops"
        elif parts[1] == "classes":
            return f"a custom class ({d})"
        else:
            if len(parts) == 2 and parts[1] in allowed:
                return None
            return None if len(parts) == 2 and parts[1] in ("Tensor", "dtype", "device", "Size") else f"a call to {d}"
    if root == "ops":
        if len(parts) < 3:
            return None if len(parts) < 2 or parts[1] in ("aten", "prim") else f"the operator library ops.{parts[1]}"
        if parts[1] in ("aten", "prim") and parts[2] in allowed:
            return None
        return f"a call to {'.'.join(parts[:3])}"
    if root == "__torch__":
        if len(parts) >= 3 and parts[1] == "torch" and parts[2] == "classes":
            return f"a custom class ({d})"
        # a qualified name of the archive's own code, a package above one, or a member of one
        names, packages = defined
        if d in names or d in packages or any(".".join(parts[:k]) in names for k in range(2, len(parts))):
            return None
        return f"a reference to {d}, which the archive does not define"
    return None


def _call(func, allowed, defined, methods, local) -> str | None:
    d = _dotted(func)
    if d is not None and "." not in d:
        if d in BUILTINS or d in local:
            return None
        return f"a call to {d}"
    if d is not None and d.split(".")[0] in ("torch", "ops", "__torch__"):
        return None            # checked as a reference
    attr = func.attr if isinstance(func, ast.Attribute) else None
    if attr is None:
        return "a call through a computed value"
    if attr in methods or attr in allowed or attr in ("forward", "append", "extend", "insert", "pop", "items", "keys", "values", "get", "format", "split", "join", "strip", "startswith", "endswith", "copy", "clear"):
        return None if not DENIED_OPS.search(attr) else f"a call to .{attr}()"
    return f"a call to .{attr}()"
