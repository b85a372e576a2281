"""A newcomer's path, from a directory that is not a checkout: recipes by name → world model →
DITTO and BC → evaluate with a video → plot both runs → export → load the export with torch alone. The fast test runs it in-process at test
sizes; the slow one runs the README's quick-start block verbatim through the installed ``wmil``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main as wmil_main

ROOT = Path(__file__).resolve().parent.parent


def test_newcomer_path_from_any_directory(tmp_path, monkeypatch, minari_root, capsys):
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    small = ["--max-episode-steps", "40", "--quiet"]
    assert wmil_main(["datasets", "recipes"]) == 0
    assert wmil_main(["build-dataset", "cartpole-world", "--episodes", "8", "--ref-episodes", "0"] + small) == 0
    assert wmil_main(["build-dataset", "cartpole-expert", "--episodes", "3", "--ref-episodes", "1"] + small) == 0
    assert wmil_main(["train-model", "--dataset", "cartpole/world-v0", "--model", "dynamics", "--preset", "tiny",
                      "--steps", "20", "-o", "batch_size=4", "-o", "seq_len=8", "-o", "eval_every=20",
                      "--out", "runs/cp-dyn", "--quiet"]) == 0
    tiny = ["--preset", "tiny", "--steps", "4", "-o", "log_every=2", "-o", "eval_every=4", "-o", "checkpoint_every=4",
            "--quiet"]
    assert wmil_main(["imagine", "--algo", "ditto", "--model", "runs/cp-dyn", "--expert", "cartpole/expert-v0",
                      "--expert-episodes", "2", "--out", "runs/cp-ditto"] + tiny) == 0
    assert wmil_main(["imagine", "--algo", "bc", "--expert", "cartpole/expert-v0", "--expert-episodes", "2",
                      "--out", "runs/cp-bc"] + tiny) == 0
    capsys.readouterr()
    assert wmil_main(["evaluate", "runs/cp-ditto", "--episodes", "2", "--video", "--video-format", "mp4",
                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "video: runs/cp-ditto/videos/episode_0.mp4" in printed
    assert (work / "runs/cp-ditto/videos/episode_0.mp4").stat().st_size > 0
    assert wmil_main(["evaluate", "runs/cp-bc", "--episodes", "2", "--quiet"]) == 0
    assert wmil_main(["plot", "runs/cp-ditto", "runs/cp-bc"]) == 0
    assert "wrote runs/cp-ditto/curves.png" in capsys.readouterr().out
    assert (work / "runs/cp-ditto/curves.png").stat().st_size > 0
    assert json.loads((work / "runs/cp-bc/evaluation.json").read_text())["episodes"] == 2
    # export, then load the program in a plain Python process (torch only, wmil never imported)
    assert wmil_main(["export", "runs/cp-ditto"]) == 0
    code = ("import sys, torch; p = torch.export.load('runs/cp-ditto/policy.pt2').module(); "
            "assert not any(m.split('.')[0] == 'wmil' for m in sys.modules); print('loaded')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "loaded", done.stderr[-1000:]


def quick_start_block() -> str:
    """The bash block of the README's "Quick start" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start_is_the_path_tested_here():
    block = quick_start_block()
    for command in ("wmil build-dataset cartpole-world", "wmil build-dataset cartpole-expert", "wmil train-model",
                    "wmil imagine --algo ditto", "wmil imagine --algo bc", "wmil evaluate runs/cp-ditto",
                    "--video", "wmil plot runs/cp-ditto runs/cp-bc"):
        assert command in block, command
    assert "datasets/" not in block  # recipes by name: no checkout needed


@pytest.mark.slow
def test_readme_quick_start_verbatim(tmp_path):
    """Every line of the README's quick start, with the installed console script, in a fresh
    directory (its ``cd`` is replaced by that directory), datasets in a fresh Minari folder."""
    script = "\n".join(line for line in quick_start_block().splitlines() if not line.startswith("cd "))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
           "MINARI_DATASETS_PATH": str(tmp_path / "minari"), "WMIL_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs/cp-ditto/videos/episode_0.mp4").stat().st_size > 0
    assert (tmp_path / "runs/cp-ditto/curves.png").stat().st_size > 0
    assert "video: runs/cp-ditto/videos/episode_0.mp4" in done.stdout
