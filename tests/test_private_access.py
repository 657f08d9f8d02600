"""One owner per piece of state: no module of litefs_py reaches into another's private names.

An attribute whose name starts with one underscore may be used on `self` or `cls` anywhere,
and on other objects only inside the module that defines it (a class reading a field of
another instance of itself, a module-level helper of the same file). Importing a private name
from another module is the same thing. What the owner offers is its public methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

import litefs_py

PACKAGE = Path(litefs_py.__file__).parent

# Public API of the standard library that happens to start with an underscore.
STDLIB_PUBLIC = {"_replace", "_make", "_asdict", "_fields", "_exit"}
# Private names another module still imports (none: keep it that way).
EXEMPT_IMPORTS: dict[str, set[str]] = {}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _defined(tree: ast.AST) -> set[str]:
    """Private names this module defines: functions, classes, module and class attributes,
    and attributes assigned on `self`/`cls`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            names.add(node.attr)
        elif isinstance(node, ast.alias) and node.asname:
            names.add(node.asname)
    return {n for n in names if _private(n)}


def private_access(source: str, module: str, label: str) -> list[str]:
    """Every use in module `module` (source text) of another module's private name, as
    "label:line: what", in line order."""
    tree = ast.parse(source)
    mine = _defined(tree)
    problems: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr in mine or node.attr in STDLIB_PUBLIC:
                continue
            problems.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            exempt = EXEMPT_IMPORTS.get(module, set())
            for alias in node.names:
                if not _private(alias.name) or alias.name in exempt:
                    continue
                if node.level == 1 and not node.module:
                    continue  # `from . import _frames`: a private module of its own package
                problems.append((node.lineno, f"from {'.' * node.level}{node.module or ''} "
                                              f"import {alias.name}"))
    return [f"{label}:{line}: {what}" for line, what in sorted(problems)]


def test_no_private_access_across_modules() -> None:
    problems = [p for path in sorted(PACKAGE.rglob("*.py"))
                for p in private_access(path.read_text(), _module_name(path),
                                        str(path.relative_to(PACKAGE.parent)))]
    assert not problems, "private names used outside their module (add a public method):\n" \
        + "\n".join(problems)


def test_the_check_finds_what_it_forbids() -> None:
    """The check itself: it flags a field read, a field write and a private import from
    another module, and lets `self`, the defining module and stdlib names through."""
    found = private_access(
        "from .store.db import _hidden\n"
        "class Mine:\n"
        "    def __init__(self):\n"
        "        self._own = 1\n"
        "    def same(self, other):\n"
        "        return other._own\n"
        "def f(db, t):\n"
        "    db._fds.get(1)\n"
        "    db._journal_hot = False\n"
        "    return t._replace(a=1)\n", "probe", "probe.py")
    assert [line.split(": ", 1)[1] for line in found] == [
        "from .store.db import _hidden", "db._fds", "db._journal_hot"], found
