"""Dataset recipes shipped with wmil, addressable by name from any directory.

The recipes live in the repository's top-level ``datasets/`` folder (one YAML file of
:class:`wmil.data.build.BuildConfig` fields per benchmark dataset). They are installed with the
package as the data package ``wmil.recipes`` (``pyproject.toml`` maps it to ``datasets/``), so
``wmil build-dataset cartpole-world`` works outside a clone. ``datasets/`` itself is never an
importable package: a top-level ``datasets`` would shadow the Hugging Face library.

A RECIPE argument is a path when such a file exists, else a recipe name (``cartpole-world``,
with or without ``.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from wmil.errors import UserError

SUFFIX = ".yaml"


def recipes_dir() -> Optional[Path]:
    """The folder of the installed recipes (the source checkout's ``datasets/`` when wmil runs
    from a checkout without being installed); None when neither exists."""
    try:
        import importlib

        # A data package without __init__.py: its folder is its (namespace) search path.
        for folder in importlib.import_module("wmil.recipes").__path__:
            if Path(folder).is_dir():
                return Path(folder)
    except ModuleNotFoundError:  # an editable install or a bare checkout: datasets/ beside wmil/
        pass
    checkout = Path(__file__).resolve().parents[2] / "datasets"
    return checkout if checkout.is_dir() else None


def list_recipes() -> dict[str, Path]:
    """Recipe name → file, sorted by name."""
    folder = recipes_dir()
    if folder is None:
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(folder.glob(f"*{SUFFIX}"))}


def find_recipe(recipe: str) -> Path:
    """The file of RECIPE: an existing path, else a shipped recipe's name."""
    path = Path(recipe).expanduser()
    if path.is_file():
        return path
    name = recipe[: -len(SUFFIX)] if recipe.endswith(SUFFIX) else recipe
    shipped = list_recipes()
    if "/" not in name and name in shipped:
        return shipped[name]
    known = ", ".join(shipped) or "none installed"
    raise UserError(f"recipe {recipe!r}: no such file and no shipped recipe of that name; shipped recipes: {known} "
                    "(wmil datasets recipes lists them)")


def read_recipe(path: Path) -> dict:
    """The YAML mapping of a recipe file (a one-line UserError when unreadable or not a mapping)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: cannot read recipe ({reason})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping of BuildConfig fields")
    return raw


def describe(path: Path) -> dict:
    """Name, dataset id, env, episodes and policy of a recipe file, for listings."""
    raw = read_recipe(path)
    parts = raw.get("parts") or []
    if parts:
        episodes = sum(int(p.get("episodes", 0)) for p in parts)
        policies = sorted({str(p.get("policy", raw.get("policy", "random"))) for p in parts})
        epsilons = [p.get("epsilon", 0.0) for p in parts]
    else:
        episodes = raw.get("episodes", 10)
        policies = [str(raw.get("policy", "random"))]
        epsilons = raw.get("epsilon", [0.0])
        epsilons = epsilons if isinstance(epsilons, list) else [epsilons]
    policy = "+".join(policies)
    if any(float(e) for e in epsilons):
        policy += " ε " + ",".join(f"{float(e):g}" for e in epsilons)
    pixels = raw.get("pixels")
    return {"recipe": path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.name,
            "dataset": raw.get("name", "?"), "env": raw.get("env", "?") + (f" ({pixels}×{pixels} pixels)" if pixels else ""),
            "episodes": episodes, "policy": policy}
