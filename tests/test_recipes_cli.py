"""Recipes by name from any directory, `wmil datasets recipes`, --help choices that stay lazy,
run summaries, the open-loop warning, and Minari metadata without placeholders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main as wmil_main
from wmil.data.recipes import describe, find_recipe, list_recipes
from wmil.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_recipes_are_listed_and_described():
    found = list_recipes()
    assert {"cartpole-world", "cartpole-expert", "lunar-world", "pixel-cartpole-world"} <= set(found)
    assert set(found) == {p.stem for p in (ROOT / "datasets").glob("*.yaml")}
    row = describe(found["cartpole-world"])
    assert row == {"recipe": "cartpole-world", "dataset": "cartpole/world-v0", "env": "CartPole-v1",
                   "episodes": 100, "policy": "expert ε 0,0.3,0.6,1"}
    assert describe(found["pixel-cartpole-world"])["env"] == "CartPole-v1 (64×64 pixels)"


def test_find_recipe_by_name_by_file_name_and_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("cartpole-world") == list_recipes()["cartpole-world"]
    assert find_recipe("cartpole-world.yaml") == list_recipes()["cartpole-world"]
    own = tmp_path / "mine.yaml"
    own.write_text("name: my/data-v0\nenv: CartPole-v1\n")
    assert find_recipe(str(own)) == own and find_recipe("mine.yaml") == Path("mine.yaml")
    (tmp_path / "cartpole-world").write_text("name: local/x-v0\nenv: CartPole-v1\n")
    assert find_recipe("cartpole-world") == Path("cartpole-world")  # an existing path wins over a name
    with pytest.raises(UserError, match="no shipped recipe of that name; shipped recipes: .*cartpole-world"):
        find_recipe("cartpole-wrld")


def test_build_dataset_from_a_recipe_name_outside_the_checkout(tmp_path, monkeypatch, minari_root, capsys):
    monkeypatch.chdir(tmp_path)
    assert wmil_main(["build-dataset", "cartpole-expert", "--episodes", "2", "--max-episode-steps", "20",
                      "--ref-episodes", "0", "--quiet", "--author", "A. Tester"]) == 0
    assert "wrote cartpole/expert-v0" in capsys.readouterr().out
    meta = json.loads((minari_root / "cartpole" / "expert-v0" / "data" / "metadata.json").read_text())
    assert meta["author"] == ["A. Tester"] and "author_email" not in meta and "code_permalink" not in meta
    assert meta["algorithm_name"] == "wmil build-dataset: expert"
    assert wmil_main(["build-dataset", "no-such-recipe"]) == 2
    assert "shipped recipes:" in capsys.readouterr().err


def test_minari_show_has_no_placeholders(tmp_path, minari_root):
    from wmil.data.build import BuildConfig, build_dataset

    build_dataset(BuildConfig(name="show/cp-v0", env="CartPole-v1", policy="random", episodes=2, ref_episodes=0),
                  progress=False)
    minari = Path(sys.executable).with_name("minari")
    out = subprocess.run([str(minari), "show", "show/cp-v0"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "MINARI_DATASETS_PATH": str(minari_root), "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "wmil@localhost" not in out.stdout and "pypi.org" not in out.stdout
    assert "wmil build-dataset: random" in out.stdout


def test_datasets_recipes_command(capsys):
    assert wmil_main(["datasets", "recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["recipe", "dataset", "env", "episodes", "policy"]
    row = next(line for line in lines if line.startswith("cartpole-world "))
    assert row.split()[:4] == ["cartpole-world", "cartpole/world-v0", "CartPole-v1", "100"]


def test_help_shows_the_registries_choices(capsys):
    from wmil.algos.base import ALGORITHMS
    from wmil.world_models.registry import WORLD_MODELS

    assert wmil_main(["train-model", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"[{'|'.join(WORLD_MODELS)}]" in text and "[tiny|small|paper]" in text and "[auto|cpu|cuda|cuda:N]" in text
    assert wmil_main(["imagine", "--help"]) == 0
    assert f"[{'|'.join(ALGORITHMS)}]" in " ".join(capsys.readouterr().out.split())
    assert wmil_main(["imagine", "--algo", "dito", "--expert", "x"]) == 2
    assert "'dito' is not one of" in capsys.readouterr().err
    assert wmil_main(["evaluate", "--help"]) == 0
    assert "[gif|mp4]" in capsys.readouterr().out


def test_device_choice_accepts_a_gpu_index():
    from cli.main import DeviceChoice

    assert DeviceChoice().convert("cuda:1", None, None) == "cuda:1"
    assert DeviceChoice().convert("cpu", None, None) == "cpu"
    with pytest.raises(Exception, match="not one of"):
        DeviceChoice().convert("tpu", None, None)


def test_top_level_help_and_recipes_do_not_import_torch():
    code = ("import sys; from cli.main import main; codes = [main(['--help']), main(['datasets', 'recipes'])]; "
            "assert codes == [0, 0]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_evaluate_model_warns_at_each_horizon_above_one(monkeypatch, capsys, tmp_path):
    import wmil.eval.world_model as ewm

    report = {"report_path": str(tmp_path / "open_loop.json")}
    for h, ratio in ((1, 36.0), (5, 0.9), (15, 1.4)):
        report.update({f"open_loop/mse_h{h}": ratio, f"open_loop/naive_mse_h{h}": 1.0, f"open_loop/ratio_h{h}": ratio})
    monkeypatch.setattr(ewm, "evaluate_world_model", lambda *a, **k: report)
    assert wmil_main(["evaluate-model", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split("at horizon ")[1].split(":")[0] for line in err] == ["1", "15"]
    assert "worse than repeating the last observation" in err[0] and "ratio 36" in err[0]


def test_train_model_and_imagine_end_with_a_summary(tmp_path, write_dataset, capsys):
    write_dataset("sum/world-v0", [30, 32, 28, 31])  # longer than 3 observed + 15 imagined steps
    write_dataset("sum/expert-v0", [10, 9])
    tiny = ["-o", "log_every=2", "-o", "eval_every=4", "-o", "checkpoint_every=4"]
    wm = tmp_path / "wm"
    assert wmil_main(["train-model", "--dataset", "sum/world-v0", "--preset", "tiny", "--steps", "4", "--quiet",
                      "--out", str(wm), "--device", "cpu", "-o", "batch_size=4", "-o", "seq_len=8",
                      "-o", "open_loop_context=3", "-o", "eval_batches=1"] + tiny) == 0
    out = capsys.readouterr().out
    assert f"run dir: {wm}  (step 4)" in out
    for key in ("loss/total", "open_loop/ratio_h15", "val/obs", "perf/frames_per_s"):
        assert f"  {key} " in out, key
    policy = tmp_path / "dbc"
    assert wmil_main(["imagine", "--algo", "dbc", "--model", str(wm), "--expert", "sum/expert-v0", "--preset", "tiny",
                      "--steps", "4", "--quiet", "--out", str(policy), "--device", "cpu"] + tiny) == 0
    out = capsys.readouterr().out
    assert f"run dir: {policy}  (step 4)" in out and "  eval/action_accuracy " in out
