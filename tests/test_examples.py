"""The scripts in examples/ run end to end, in order, on tiny budgets (each as a new user would:
``python examples/NN_name.py --tiny --out DIR``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("[0-9][0-9]_*.py"))


def test_there_are_examples_and_they_are_short():
    assert len(EXAMPLES) >= 6
    for path in EXAMPLES:
        assert len(path.read_text().splitlines()) <= 50, f"{path.name} is longer than 50 lines"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_run_in_order(script, tmp_path_factory, minari_root):
    """Each script uses what the previous ones made (datasets, world model, policies)."""
    shared = tmp_path_factory.getbasetemp() / "examples"
    env = {**os.environ, "MINARI_DATASETS_PATH": str(shared / "datasets"), "WMIL_NUM_THREADS": "1",
           "SDL_VIDEODRIVER": "dummy"}
    result = subprocess.run([sys.executable, script.name, "--tiny", "--out", str(shared / "runs")],
                            cwd=script.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip(), f"{script.name} printed nothing"
