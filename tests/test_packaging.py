"""Packaging: every subpackage is installed, the CLI module is wmil.cli, the recipes ship as the
data package wmil.recipes (never a top-level ``datasets``), the API is lazy and discoverable."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"wmil." + ".".join(p.parent.relative_to(ROOT / "wmil").parts) if p.parent != ROOT / "wmil" else "wmil"
             for p in (ROOT / "wmil").rglob("__init__.py")}
    assert found | {"wmil.cli", "wmil.recipes"} == listed


def test_recipes_folder_is_not_a_python_package():
    # A datasets/__init__.py would make `import datasets` in a checkout shadow Hugging Face's library.
    assert not (ROOT / "datasets" / "__init__.py").exists()
    assert not list((ROOT / "datasets").glob("*.py"))


def test_import_is_light_and_api_resolves():
    code = "import sys, wmil; assert 'torch' not in sys.modules; print(wmil.load_policy.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "wmil.train.policy"  # beside train_world_model (wmil.train)


def test_lazy_api_is_visible_to_dir_and_documented():
    import wmil

    listed = dir(wmil)
    for name in ("build_dataset", "BuildConfig", "train_world_model", "load_world_model", "train_policy",
                 "load_policy", "evaluate_policy", "set_threads", "data", "envs"):
        assert name in listed, name
        assert getattr(wmil, name).__doc__, name
    for name in ("train_world_model", "load_world_model", "train_policy", "load_policy", "evaluate_policy",
                 "build_dataset"):
        assert "return" in getattr(wmil, name).__annotations__, name


def test_wheel_ships_the_recipes_and_they_resolve_from_any_directory(tmp_path):
    """Build the wheel from a copy of the sources, install it into a folder, and name a recipe
    from a directory that is not a checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("wmil", "cli", "datasets"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("wmil-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "wmil/recipes/cartpole-world.yaml" in names
    assert not [n for n in names if n.startswith(("datasets/", "cli/"))]
    target = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import wmil, wmil.data.recipes as r; print(wmil.__file__); print(r.find_recipe('cartpole-world'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=elsewhere,
                         env={**os.environ, "PYTHONPATH": str(target)}).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1] == str(target / "wmil" / "recipes" / "cartpole-world.yaml")
