"""Packaging: every subpackage is installed, the CLI module is wmil.cli, the API is lazy."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"wmil." + ".".join(p.parent.relative_to(ROOT / "wmil").parts) if p.parent != ROOT / "wmil" else "wmil"
             for p in (ROOT / "wmil").rglob("__init__.py")}
    assert found | {"wmil.cli"} == listed


def test_import_is_light_and_api_resolves():
    code = "import sys, wmil; assert 'torch' not in sys.modules; print(wmil.load_policy.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "wmil.train.policy"  # beside train_world_model (wmil.train)
