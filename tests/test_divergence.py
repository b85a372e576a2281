"""The divergence guard: absurd learning rates stop every trainer with one line naming the term
and the last good checkpoint; noisy but healthy losses never do; 'warn' only warns."""

import math
import warnings

import numpy as np
import pytest

import wmil
from cli.main import main as wmil_main
from wmil.errors import UserError, WmilWarning
from wmil.runs import RunDir
from wmil.train.divergence import DivergenceGuard
from wmil.train.world_model import train_world_model

WM = {"log_every": "1", "eval_every": "100", "checkpoint_every": "2", "batch_size": "4", "seq_len": "8",
      "open_loop_context": "3", "eval_batches": "1"}
CADENCE = {"log_every": "1", "eval_every": "100", "checkpoint_every": "2"}
RUN = {**CADENCE, "batch_size": "8", "horizon": "3", "eval_starts": "8"}


# ---- the rule ------------------------------------------------------------------------------------------
def test_healthy_losses_never_trip_the_rule():
    """Heavy-tailed noise (log-normal, σ = 1: single values 20× the median), fast early drops,
    steady growth of 20 %/update, negative losses and terms that wake up from zero."""
    rng = np.random.default_rng(0)
    guard = DivergenceGuard("stop")
    for step in range(1, 3001):
        guard.check(step, {
            "loss/noisy": float(np.exp(rng.normal(0, 1.0))),
            "loss/dropping": 1e4 * math.exp(-step / 20) + 0.01,
            "loss/growing": 1e-3 * 1.2 ** min(step, 60),
            "loss/actor": float(-5 + rng.normal(0, 3)),
            "loss/wakes_up": 0.0 if step < 500 else float(rng.uniform(0, 50)),
            "actor/grad_norm": float(rng.exponential(10)),
        })


@pytest.mark.parametrize("jump", [1e3, 1e8])
def test_a_jump_far_above_the_running_level_stops(jump):
    guard = DivergenceGuard("stop", lambda: "step_00000040.pt")
    rng = np.random.default_rng(1)
    for step in range(1, 50):
        guard.check(step, {"loss/obs": float(np.exp(rng.normal(0, 0.3)))})
    with pytest.raises(UserError, match=r"step 50: loss term 'loss/obs' jumped to .* far above its running level .*"
                                        r"the last checkpoint \(step_00000040.pt\) is intact.*on_divergence=warn"):
        guard.check(50, {"loss/obs": jump})


def test_non_finite_metrics_stop_and_warn_mode_warns_once():
    with pytest.raises(UserError, match="step 3: 'actor/grad_norm' is inf; training stopped"):
        DivergenceGuard("stop").check(3, {"actor/grad_norm": math.inf})
    guard = DivergenceGuard("warn")
    with pytest.warns(WmilWarning) as record:
        for step in range(1, 20):
            guard.check(step, {"actor/grad_norm": math.inf if step > 5 else 1.0, "loss/x": 1.0 if step < 10 else 1e9})
    assert [str(w.message).split(";")[0] for w in record] == [
        "step 6: 'actor/grad_norm' is inf", "step 10: loss term 'loss/x' jumped to 1e+09, far above its running level 1"]
    with pytest.raises(UserError, match="step 20: 'loss/x' is nan; training stopped"):
        guard.check(20, {"loss/x": math.nan})  # a non-finite loss stops even when warning
    state = guard.state()
    restored = DivergenceGuard("warn")
    restored.load_state(state)
    assert restored.stats == guard.stats and restored.warned == guard.warned
    with pytest.raises(UserError, match="on_divergence='never'"):
        DivergenceGuard("never")


# ---- absurd learning rates on the tiny configs ------------------------------------------------------------
@pytest.fixture
def data(write_dataset):
    return write_dataset("dv/world-v0", [12, 14, 16, 11]), write_dataset("dv/expert-v0", [10, 9, 12])


@pytest.mark.parametrize("model", ["rssm", "gaussian_rssm", "dynamics"])
def test_world_models_at_absurd_learning_rates_stop(data, tmp_path, model):
    world, _ = data
    out = tmp_path / model
    with pytest.raises(UserError, match=r"step \d+: (loss term '[^']+' (jumped|is)|'train/grad_norm' is)"):
        train_world_model(world, model=model, preset="tiny", out=out, steps=40, progress=False, device="cpu",
                          overrides={**WM, "lr": "1e4"})
    assert [p.name for p in RunDir(out, "world_model").checkpoints()] in ([], ["step_00000002.pt"])


LEARNERS = {
    "ditto": ("rssm", {"actor_lr": "1e4", "critic_lr": "1e4"}),
    "dgail": ("rssm", {"actor_lr": "1e4", "critic_lr": "1e4", "disc_lr": "1e4"}),
    "dbc": ("rssm", {"actor_lr": "1e4"}),
    "sqil": ("rssm", {"critic_lr": "1e4", "actor_lr": "1e4"}),
    "gpril": ("rssm", {"actor_lr": "1e4", "flow_lr": "1e4"}),
    "vins": ("dynamics", {"actor_lr": "1e4", "value_lr": "1e4"}),
    "bc": (None, {"actor_lr": "1e4"}),
}
#: Run overrides that an algorithm accepts (BC and VINS have no imagination horizon).
def run_overrides(algo):
    return {**CADENCE, "batch_size": "8"} if algo in ("bc", "vins") else RUN



@pytest.mark.parametrize("algo", sorted(LEARNERS))
def test_learners_at_absurd_learning_rates_stop(data, tmp_path, algo):
    world, expert = data
    model, lrs = LEARNERS[algo]
    wm = None
    if model is not None:
        wm = tmp_path / "wm"
        train_world_model(world, model=model, preset="tiny", out=wm, steps=3, progress=False, device="cpu",
                          overrides=WM)
    with pytest.raises(UserError, match=r"step \d+: .*training stopped"):
        wmil.train_policy(algo, wm, expert, out=tmp_path / algo, preset="tiny", steps=30, progress=False,
                          device="cpu", overrides={**run_overrides(algo), **lrs})


def test_the_cli_stops_with_one_line_and_warn_mode_goes_on(data, tmp_path, capsys, monkeypatch):
    args = ["train-model", "--dataset", "dv/world-v0", "--model", "dynamics", "--preset", "tiny", "--steps", "6",
            "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu", *[a for k, v in WM.items() for a in ("-o", f"{k}={v}")]]
    from wmil.world_models.dynamics import Dynamics

    original = Dynamics.loss
    calls = {"n": 0}

    def spiking(self, batch):  # one update 10^6 times its level: a divergence, finite
        losses, metrics, post = original(self, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                losses = {k: v * 1e6 for k, v in losses.items()}
        return losses, metrics, post

    monkeypatch.setattr(Dynamics, "loss", spiking)
    assert wmil_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: step 3: loss term 'loss/dynamics' jumped to")
    assert "the last checkpoint (step_00000002.pt) is intact" in err
    # Resuming with on_divergence=warn (allowed to change) trains on, warning once.
    calls["n"] = 2  # the spike comes again on the first update after the resume (step 3)
    assert wmil_main(args + ["-o", "on_divergence=warn"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: step 3: loss term 'loss/dynamics' jumped") and err.count("\n") == 1, err
    assert "loss term 'loss/total' jumped" in err  # every term that jumped, in one line
    run = RunDir(tmp_path / "run", "world_model")
    assert run.checkpoints()[-1].name == "step_00000006.pt"
    assert run.read_config()["history"][0]["changed"] == {"train.on_divergence": ["stop", "warn"]}


def test_normal_tiny_runs_are_never_stopped(data, tmp_path):
    """The shipped tiny presets at their own learning rates, for more updates than the tests use."""
    world, expert = data
    with warnings.catch_warnings():
        warnings.simplefilter("error", WmilWarning)
        for model in ("rssm", "dynamics"):
            train_world_model(world, model=model, preset="tiny", out=tmp_path / model, steps=150, progress=False,
                              device="cpu", overrides={**WM, "checkpoint_every": "150"})
        for algo, model in (("ditto", "rssm"), ("dgail", "rssm"), ("sqil", "rssm"), ("vins", "dynamics"), ("bc", None)):
            wmil.train_policy(algo, tmp_path / model if model else None, expert, out=tmp_path / f"p-{algo}",
                              preset="tiny", steps=100, progress=False, device="cpu",
                              overrides={**run_overrides(algo), "checkpoint_every": "100"})
