"""The package's layers point one way: every import (module level or inside a function) is parsed, and an
import from a lower layer into a higher one, between two packages of the same layer, or a cycle between
packages fails. The layers are the ones docs/ARCHITECTURE.md draws."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mobile_vla"

# Bottom to top. Packages on one line are siblings: neither may import the other.
LAYERS: list[set[str]] = [
    {"utils"},
    {"data", "backbones", "metrics", "runs"},
    {"features"},
    {"policies"},
    {"training", "evaluation"},
    {"registry"},
    {"sim", "serving"},
    {"demo", "export"},
    {"commands"},
    {"cli"},
]
ROOT = "mobile_vla"  # the top package itself: __version__ only, importable by anyone


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, src: Path = SRC) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every ``mobile_vla`` import in a file, wherever it sits."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from mobile_vla import data`` imports the package ``mobile_vla.data``
            names = (
                [target] + [f"{target}.{alias.name}" for alias in node.names] if target == ROOT else [target]
            )
        else:
            continue
        found += [(name, node.lineno) for name in names if name == ROOT or name.startswith(ROOT + ".")]
    return found


def layer_of(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package {package!r} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def package_edges(src: Path = SRC) -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(src.rglob("*.py")):
        source = package_of(_module_name(path, src))
        for target, line in imports_of(path, src):
            target_package = package_of(target)
            if source and target_package and target_package != source and not target.endswith("__version__"):
                edges[(source, target_package)].append(f"{path.relative_to(src.parent)}:{line} -> {target}")
    return edges


def violations(src: Path = SRC) -> list[str]:
    """Every arrow that does not point down, and every cycle between packages."""
    edges = package_edges(src)
    bad = []
    for (a, b), where in sorted(edges.items()):
        if layer_of(b) >= layer_of(a):
            kind = "sideways" if layer_of(b) == layer_of(a) else "upward"
            bad += [f"{kind} {a} -> {b}: {w}" for w in where]
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    bad.append("cycle " + " -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    return bad


def test_every_package_is_in_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    for package in packages:
        layer_of(package)


def test_imports_point_down_and_form_no_cycle():
    assert violations() == []


def test_the_checker_finds_an_upward_lazy_import_and_a_cycle(tmp_path):
    """The test above can fail: a lazy import from policies into training is reported, with its cycle."""
    pkg = tmp_path / "mobile_vla"
    for name, text in {
        "__init__.py": "",
        "policies/__init__.py": "",
        "policies/inference.py": "def load():\n    from mobile_vla.training.trainer import read_run_config\n",
        "training/__init__.py": "",
        "training/trainer.py": "from mobile_vla.policies import inference\n",
        "features/__init__.py": "from ..policies import inference\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found = violations(pkg)
    assert (
        "upward policies -> training: mobile_vla/policies/inference.py:2 -> mobile_vla.training.trainer"
        in found
    )
    assert "upward features -> policies: mobile_vla/features/__init__.py:1 -> mobile_vla.policies" in found
    assert any(v.startswith("cycle policies -> training -> policies") for v in found)
