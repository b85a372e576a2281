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
