"""Imports point down the layers of docs/design.md; a module never imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import litefs_py

PACKAGE = Path(litefs_py.__file__).parent

# Lower number = lower layer. A module may import its own layer or any lower one.
LAYERS: dict[str, int] = {
    "errors": 0, "types": 0, "mountinfo": 0,
    "ltx": 1, "sqlite": 1,
    "store": 2,
    "storage": 3,
    "replication": 4,
    "fuse": 5,
    "config": 6, "replica_clients": 6,
    "app": 7, "doctor": 7, "proxy": 7, "cluster": 7,
    "cli": 8, "__main__": 8,
}
# Third-party libraries that belong to one layer only (docs/design.md).
CONFINED = {"boto3": {"storage.s3"}, "botocore": {"storage.s3"},
            "pyfuse3": {"fuse", "app"}, "prometheus_client": {"replication.metrics"}}
PURE = {"ltx", "sqlite"}  # no trio, pyfuse3, boto3


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append((".".join(parts), path))
    return out


def imported(path: Path, module: str) -> set[str]:
    """Absolute names of litefs_py modules and top-level third-party packages imported."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(["litefs_py", *base, *(node.module or "").split(".")])
                names.add(target.rstrip("."))
            elif node.module:
                names.add(node.module)
    return names


def layer_of(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_every_module_has_a_layer() -> None:
    for module, _ in modules():
        if module:
            assert module.split(".")[0] in LAYERS, f"{module} is in no layer of docs/design.md"


def test_imports_point_down() -> None:
    problems = []
    for module, path in modules():
        if not module:
            continue
        mine = layer_of(module)
        for name in imported(path, module):
            if name.startswith("litefs_py."):
                target = name.removeprefix("litefs_py.")
                if target.split(".")[0] in LAYERS and layer_of(target) > mine:
                    problems.append(f"{module} (layer {mine}) imports {target} "
                                    f"(layer {layer_of(target)})")
            top = name.split(".")[0]
            allowed = CONFINED.get(top)
            if allowed is not None and not any(module == a or module.startswith(a + ".")
                                               for a in allowed):
                problems.append(f"{module} imports {top}, which belongs to {sorted(allowed)}")
            if module.split(".")[0] in PURE and top in {"trio", "pyfuse3", "boto3", "click"}:
                problems.append(f"{module} is a pure codec but imports {top}")
    assert not problems, "\n".join(problems)
