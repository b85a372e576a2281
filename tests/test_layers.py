"""Layers point one way: no module of wmil imports (at module level or inside a function) from
a layer above its own. From the bottom: errors/types/config/progress/threads, nets, envs, data, world models,
the deployed policies, imagination, algorithms, run directories, trainers, evaluation, the CLI.
The package root (``wmil/__init__.py``) is the lazy public API on top of everything."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [("wmil.errors", "wmil.types", "wmil.config", "wmil.progress", "wmil.threads", "wmil.precision", "wmil.distributed"), ("wmil.nets",), ("wmil.envs",), ("wmil.data",),
          ("wmil.world_models",), ("wmil.policy",), ("wmil.imagination",), ("wmil.algos",), ("wmil.runs",),
          ("wmil.train",), ("wmil.eval", "wmil.export"), ("wmil.cli",)]


def layer(module: str):
    for index, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    return None


def upward_imports(module: str, source: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``source`` from a layer above ``module``'s."""
    here = layer(module)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        above = [t for t in targets if here is not None and (layer(t) or 0) > here]
        if above:
            found.append((above[0], node.lineno))
    return found


def _modules():
    for path in sorted((ROOT / "wmil").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts).removesuffix(".__init__"), path
    for path in sorted((ROOT / "cli").rglob("*.py")):
        yield "wmil." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def test_the_check_sees_an_upward_import():
    source = "def f():\n    from wmil.algos.base import Learner\n"
    assert upward_imports("wmil.imagination.metrics", source) == [("wmil.algos.base", 2)]
    assert upward_imports("wmil.train.policy", source) == []


def test_no_module_imports_from_a_layer_above_its_own():
    offenders = [f"{module} imports {target} (line {line})"
                 for module, path in _modules() for target, line in upward_imports(module, path.read_text())]
    assert not offenders, offenders
    unplaced = [module for module, _ in _modules() if module != "wmil" and layer(module) is None]
    assert not unplaced, f"add these modules to a layer: {unplaced}"
