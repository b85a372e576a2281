"""``wmil imagine`` / ``train_policy`` and ``load_policy``: the CLI path to a scored policy, and
bad input (wrong data, wrong run directories, unknown algorithms, impossible horizons)."""

import json

import pytest
from helpers import tiny_world_model

from cli.main import main as wmil_main
from wmil.data.build import BuildConfig, build_dataset
from wmil.errors import UserError
from wmil.train.policy import train_policy

AC = {"log_every": "2", "eval_every": "4", "checkpoint_every": "3", "batch_size": "8", "horizon": "3",
      "eval_starts": "8"}


def test_evaluate_cli_reports_scores_and_rejects_wrong_env(tmp_path, capsys):
    world = build_dataset(BuildConfig(name="im/cp-v0", env="CartPole-v1", policy="expert", epsilon=[0.0, 1.0],
                                      episodes=4, max_episode_steps=40, ref_episodes=1), progress=False)
    wm = tiny_world_model(world, tmp_path / "wm", steps=3)
    out = tmp_path / "cp-ditto"
    assert wmil_main(["imagine", "--algo", "ditto", "--model", str(wm), "--expert", "im/cp-v0", "--expert-episodes", "2",
                      "--preset", "tiny", "--steps", "2", "--out", str(out), "--quiet", "--device", "cpu"]
                     + [a for k, v in AC.items() for a in ("-o", f"{k}={v}")]) == 0
    assert wmil_main(["evaluate", str(out), "--episodes", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "normalized_score" in printed and "eval/action_accuracy" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["returns"]) == 2 and report["ref_max_score"] > report["ref_min_score"]
    assert wmil_main(["evaluate", str(out), "--env", "Pendulum-v1", "--episodes", "1"]) == 2
    assert "the policy expects" in capsys.readouterr().err
    assert wmil_main(["plot", str(out), str(wm), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_imagine_bad_inputs(tmp_path, write_dataset):
    world = write_dataset("im/world-v0", [12, 14, 16, 11])
    expert = write_dataset("im/expert-v0", [10, 9])
    wm = tiny_world_model(world, tmp_path / "wm", steps=3)
    other = write_dataset("im/cont-v0", [10, 9], discrete=False)
    with pytest.raises(UserError, match="expert dataset im/cont-v0 has .* but the world model"):
        train_policy("ditto", wm, other, out=tmp_path / "a", preset="tiny", progress=False)
    with pytest.raises(UserError, match="--expert-episodes 5.*has 2 episodes"):
        train_policy("ditto", wm, expert, out=tmp_path / "b", preset="tiny", expert_episodes=5, progress=False)
    with pytest.raises(UserError, match="not a world-model run"):
        train_policy("ditto", tmp_path / "nothing", expert, out=tmp_path / "c", preset="tiny", progress=False)
    policy_run = tmp_path / "d"
    train_policy("ditto", wm, expert, out=policy_run, preset="tiny", steps=1, overrides=AC, progress=False)
    with pytest.raises(UserError, match="holds a policy run, not a world model"):
        train_policy("ditto", policy_run, expert, out=tmp_path / "e", preset="tiny", progress=False)
    with pytest.raises(UserError, match="unknown algorithm"):
        train_policy("dreamer", wm, expert, out=tmp_path / "f", preset="tiny", progress=False)
    with pytest.raises(UserError, match="shorter than the imagination horizon"):
        train_policy("ditto", wm, expert, out=tmp_path / "g", preset="tiny", overrides={"horizon": "30"}, progress=False)
    with pytest.raises(UserError, match="needs --model|trains inside a world model"):
        train_policy("ditto", None, expert, out=tmp_path / "h", preset="tiny", progress=False)
    with pytest.raises(UserError, match="is not a config field"):
        train_policy("ditto", wm, expert, out=tmp_path / "i", preset="tiny", overrides={"nope": "1"}, progress=False)


def test_callbacks_see_every_logged_row_and_can_stop_a_run(tmp_path, write_dataset):
    from wmil.runs import RunDir
    from wmil.train.world_model import train_world_model

    expert = write_dataset("cb/expert-v0", [10, 9, 12])
    seen = []

    def watch(step, metrics):
        seen.append((step, "loss/bc" in metrics, "eval/action_accuracy" in metrics))
        return step >= 4  # stop at the second logged row

    overrides = {"log_every": "2", "eval_every": "4", "checkpoint_every": "100"}
    train_policy("bc", None, expert, out=tmp_path / "bc", preset="tiny", steps=10, overrides=overrides,
                 progress=False, device="cpu", callbacks=[watch])
    assert seen == [(2, True, False), (4, True, True)]
    run = RunDir(tmp_path / "bc", "policy")
    assert [c.name for c in run.checkpoints()] == ["step_00000004.pt"], "a checkpoint where the callback stopped"
    train_policy("bc", None, expert, out=tmp_path / "bc", preset="tiny", steps=10, overrides=overrides,
                 progress=False, device="cpu")  # re-run: continues to the end
    assert [m["step"] for m in run.read_metrics()] == [2, 4, 6, 8, 10]
    rows = []
    world = write_dataset("cb/world-v0", [12, 14, 16, 11])
    train_world_model(world, preset="tiny", out=tmp_path / "wm", steps=3, progress=False, device="cpu",
                      overrides={"log_every": "1", "batch_size": "2", "seq_len": "6", "open_loop_context": "2"},
                      callbacks=[lambda step, metrics: rows.append(step)])
    assert rows == [1, 2, 3]


def test_imagine_precision_is_recorded_and_a_resume_with_another_is_refused(tmp_path, write_dataset, capsys):
    import yaml

    from wmil.runs import RunDir

    world = write_dataset("pr/world-v0", [12, 14, 16, 11])
    write_dataset("pr/expert-v0", [10, 9])
    wm = tiny_world_model(world, tmp_path / "wm", steps=3)
    args = ["imagine", "--algo", "ditto", "--model", str(wm), "--expert", "pr/expert-v0", "--preset", "tiny",
            "--quiet", "--device", "cpu"] + [a for k, v in AC.items() for a in ("-o", f"{k}={v}")]
    out = tmp_path / "bf16"
    assert wmil_main(args + ["--steps", "2", "--out", str(out), "--precision", "bf16"]) == 0
    assert RunDir(out, "policy").read_config()["train"]["precision"] == "bf16"
    with pytest.raises(UserError, match=r"different train.precision \('bf16' → 'fp32'\)"):
        train_policy("ditto", wm, "pr/expert-v0", out=out, preset="tiny", steps=4, overrides=AC, progress=False)
    capsys.readouterr()
    assert wmil_main(args + ["--steps", "2", "--out", str(tmp_path / "x"), "--precision", "fp16"]) == 2
    assert not (tmp_path / "x").exists()
    # A run written before the option existed trained in fp32 and resumes as such.
    old = tmp_path / "old"
    train_policy("ditto", wm, "pr/expert-v0", out=old, preset="tiny", steps=3, overrides=AC, progress=False)
    path = RunDir(old, "policy").config_path
    config = yaml.safe_load(path.read_text())
    del config["train"]["precision"]
    del config["algo_config"]["continue_discount"]  # added later too: on by default, a no-op without a head
    for field in ("starts", "world_episodes"):      # DITTO's world-data starts, added later: expert starts
        del config["algo_config"][field]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # It started from expert states, DITTO's default then: resuming with today's world starts is refused.
    with pytest.raises(UserError, match="algo_config.starts"):
        train_policy("ditto", wm, "pr/expert-v0", out=old, preset="tiny", steps=4, overrides=AC, progress=False)
    train_policy("ditto", wm, "pr/expert-v0", out=old, preset="tiny", steps=4, overrides={**AC, "starts": "expert"},
                 progress=False)
    assert [m["step"] for m in RunDir(old, "policy").read_metrics()][-1] == 4
