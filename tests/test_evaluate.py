"""``wmil evaluate``'s report: success at the last step and at any step."""

from __future__ import annotations

import pytest

from wmil.train.policy import train_policy
from wmil.data.build import BuildConfig, build_dataset
from wmil.eval.evaluate import evaluate_policy, summarize


def test_summarize_success_conventions():
    report = summarize([-3.0, -5.0, -1.0, -4.0], [5, 5, 5, 5], [1.0, 0.0, 1.0, 0.0],
                       {"ref_min_score": -5.0, "ref_max_score": -1.0}, ever=[1.0, 1.0, 1.0, 0.0])
    assert report["success_rate"] == 0.5 and report["success_any"] == 0.75
    assert report["normalized_score"] == pytest.approx((-3.25 + 5) / 4)
    assert "success_any" not in summarize([1.0], [3], [], {})


def test_fetch_evaluation_reports_both_success_rates(tmp_path, minari_root):
    expert = build_dataset(BuildConfig(name="ev/reach-v0", env="FetchReach-v4", policy="expert", episodes=3,
                                       max_episode_steps=10, ref_episodes=0), progress=False)
    out = tmp_path / "bc"
    train_policy("bc", None, expert, out=out, preset="tiny", steps=2, progress=False, device="cpu",
                 overrides={"log_every": "1", "eval_every": "2", "checkpoint_every": "2"})
    report = evaluate_policy(out, episodes=3, progress=False)
    assert report["episodes"] == 3 and report["length_mean"] == 10
    assert 0.0 <= report["success_rate"] <= report["success_any"] <= 1.0


@pytest.mark.parametrize("algo,expected", [("ditto", "deter"), ("dbc", "mean")])
def test_offline_latent_distance_compares_what_the_reward_compares(env_worlds, tmp_path, monkeypatch, algo, expected):
    """evaluate's latent distance is taken on the reward's features (DITTO: h), as training logs
    it, not on the actor's input (DITTO: [h, z] with sampled z, mostly sampling noise)."""
    import wmil.eval.offline as offline
    from wmil.train.policy import load_policy

    world = env_worlds(True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world.datasets))
    out = tmp_path / algo
    overrides = {"log_every": "1", "eval_every": "1", "checkpoint_every": "1", "batch_size": "8", "horizon": "3",
                 "eval_starts": "8"}
    if algo == "dbc":
        overrides = {k: v for k, v in overrides.items() if k != "horizon"}
    train_policy(algo, world.model("rssm"), world.expert, out=out, preset="tiny", steps=1, overrides=overrides,
                 progress=False, device="cpu")
    calls = []
    real = offline.latent_distance
    monkeypatch.setattr(offline, "latent_distance", lambda *a, **k: calls.append(k) or real(*a, **k))
    metrics = offline.offline_metrics(load_policy(out), starts=8)
    assert [c["compare"] for c in calls] == [expected] and 0.0 <= metrics["eval/latent_distance"] <= 2.0
