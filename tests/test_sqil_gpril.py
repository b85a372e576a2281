"""SQIL and GPRIL in the world model: pure functions against hand-computed values, the
train → load → act conformance over action types and world models, exact resume, bad input,
and learning checks that can fail (fixed seeds)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from wmil.algos import base
from wmil.algos.gpril import Gpril, GprilConfig, PredecessorModel, actor_log_prob, geometric_offsets
from wmil.algos.gpril import PRESETS as GPRIL_PRESETS
from wmil.algos.sqil import PRESETS as SQIL_PRESETS
from wmil.algos.sqil import Sqil, SqilConfig, soft_value, sqil_targets
from wmil.errors import UserError
from wmil.imagination.actor_critic import Actor, ActorCriticConfig
from wmil.runs import seed_everything
from wmil.train.world_model import load_world_model, train_world_model
from wmil.types import DataSpec

WM_TINY = {"log_every": "2", "eval_every": "2", "checkpoint_every": "2", "batch_size": "4", "seq_len": "6",
           "open_loop_context": "2", "eval_batches": "1"}


def _world(write_dataset, tmp_path, discrete, model="rssm"):
    data = write_dataset(f"wm/{'d' if discrete else 'c'}-v0", [9, 12, 8, 10], discrete=discrete)
    out = tmp_path / f"wm-{model}-{discrete}"
    train_world_model(data, model=model, preset="tiny", out=out, steps=2, overrides=WM_TINY, progress=False,
                      device="cpu")
    return data, out


def _frozen(run_dir):
    world_model = load_world_model(run_dir)
    for parameter in world_model.parameters():
        parameter.requires_grad_(False)
    return world_model


# --------------------------------------------------------------------------- pure functions


def test_soft_value_by_hand():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    expected = torch.tensor([2 + math.log(1 + math.exp(-1)), math.log(2)])
    torch.testing.assert_close(soft_value(q, 1.0), expected)
    # α = 0.5: 0.5·log(e² + e⁴) = 2 + 0.5·log(1 + e⁻²)
    torch.testing.assert_close(soft_value(q[:1], 0.5), torch.tensor([2 + 0.5 * math.log(1 + math.exp(-2))]))


def test_sqil_targets_by_hand():
    next_value = torch.tensor([2.0, 5.0, -1.0])
    done = torch.tensor([False, True, False])
    # demo reward 1, γ = 0.9: 1 + 0.9·2 = 2.8; into a terminal state r/(1−γ) = 10; 1 − 0.9 = 0.1
    torch.testing.assert_close(sqil_targets(1.0, next_value, done, 0.9), torch.tensor([2.8, 10.0, 0.1]))
    torch.testing.assert_close(sqil_targets(1.0, next_value, done, 0.9, terminal_bonus=False),
                               torch.tensor([2.8, 1.0, 0.1]))
    # the agent's own transitions: reward 0
    torch.testing.assert_close(sqil_targets(0.0, next_value, torch.zeros(3, dtype=torch.bool), 0.9),
                               torch.tensor([1.8, 4.5, -0.9]))


def test_geometric_offsets_stay_inside_episodes():
    rng = np.random.default_rng(0)
    offsets, n_actions = np.array([0, 4, 10, 11]), np.array([3, 5, 0, 40])  # the third episode has no action
    start, target = geometric_offsets(rng, offsets, n_actions, 5000, gamma=0.8)
    episode = np.searchsorted(offsets, start, side="right") - 1
    episode = np.where(n_actions[episode] == 0, episode - 1, episode)  # never sampled; guards the lookup
    assert (n_actions[episode] > 0).all()
    assert (start >= offsets[episode]).all() and (start < offsets[episode] + n_actions[episode]).all()
    assert (target > start).all() and (target <= offsets[episode] + n_actions[episode]).all()
    # γ = 0: s̄ is always the next state; a long episode shows the geometric mean γ/(1−γ)
    start, target = geometric_offsets(rng, offsets, n_actions, 100, gamma=0.0)
    assert (target == start + 1).all()
    start, target = geometric_offsets(rng, np.array([0]), np.array([10_000]), 20_000, gamma=0.5)
    assert abs((target - start - 1).mean() - 1.0) < 0.05
    assert abs((target - start - 1 == 0).mean() - 0.5) < 0.02


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_log_prob_matches_actor_sampling(discrete):
    torch.manual_seed(0)
    spec = DataSpec((3,), "float32", 3, True) if discrete else DataSpec((3,), "float32", 2, False, (-2.0, 0.0), (2.0, 1.0))
    actor = Actor(5, spec, ActorCriticConfig(layers=1, units=16))
    features = torch.randn(64, 5)
    action, log_prob, _ = actor(features)
    torch.testing.assert_close(actor_log_prob(actor, features, action), log_prob, atol=2e-3, rtol=1e-3)


# ------------------------------------------------------------------------------ conformance


CASES = [("sqil", True, "rssm"), ("sqil", False, "rssm"), ("gpril", True, "rssm"), ("gpril", False, "rssm"),
         ("sqil", True, "gaussian_rssm"), ("gpril", False, "gaussian_rssm")]


@pytest.mark.parametrize("algo,discrete,model", CASES)
def test_train_load_act(algo, discrete, model, write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete, model)
    out = tmp_path / "policy"
    base.train_policy(algo, wm, data, out=out, preset="tiny", steps=4, progress=False, device="cpu",
                      overrides={"eval_every": "2", "log_every": "2"})
    policy = base.load_policy(out)
    policy.reset()
    for t in range(3):
        action = policy.act(np.array([0.0, float(t), 0.0], np.float32))
        if discrete:
            assert isinstance(action, int) and 0 <= action < 3
        else:
            assert action.shape == (1,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
    last = base.RunDir(out, "policy").read_metrics()[-1]
    assert any(k.startswith("loss/") for k in last) and ("eval/action_accuracy" in last or "eval/action_mse" in last)


@pytest.mark.parametrize("algo", ["sqil", "gpril"])
def test_resume_is_exact(algo, write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=algo == "sqil")
    kwargs = dict(preset="tiny", progress=False, device="cpu", overrides={"checkpoint_every": "3"})
    full = base.train_policy(algo, wm, data, out=tmp_path / "full", steps=6, **kwargs)
    base.train_policy(algo, wm, data, out=tmp_path / "part", steps=3, **kwargs)
    resumed = base.train_policy(algo, wm, data, out=tmp_path / "part", steps=6, **kwargs)
    a, b = full.actor.state_dict(), resumed.actor.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_gpril_from_offline_data(write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=True)
    out = tmp_path / "policy"
    base.train_policy("gpril", wm, data, out=out, preset="tiny", steps=3, progress=False, device="cpu",
                      overrides={"predecessors": "data"})
    policy = base.load_policy(out)
    policy.reset()
    assert 0 <= policy.act(np.zeros(3, np.float32)) < 3


def test_bad_input(write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=True)
    continuous = write_dataset("wm/other-v0", [6, 7], discrete=False)
    for algo in ("sqil", "gpril"):
        with pytest.raises(UserError, match="continuous|Box"):
            base.train_policy(algo, wm, continuous, out=tmp_path / f"x-{algo}", preset="tiny", progress=False)
        # Directly, too: the learner names the mismatch in one line.
        cls = base.algorithm_class(algo)
        with pytest.raises(UserError, match="action space"):
            cls(_frozen(wm), continuous, cls.config_cls(**cls.presets["tiny"]), torch.device("cpu"))
    with pytest.raises(UserError, match="predecessors"):
        base.train_policy("gpril", wm, data, out=tmp_path / "p", preset="tiny", progress=False,
                          overrides={"predecessors": "nowhere"})
    with pytest.raises(UserError, match="gamma"):
        base.train_policy("sqil", wm, data, out=tmp_path / "g", preset="tiny", progress=False,
                          overrides={"gamma": "1.0"})


def test_gpril_nan_flows_stop_training(write_dataset, tmp_path, monkeypatch):
    data, wm = _world(write_dataset, tmp_path, discrete=True)
    original = PredecessorModel.log_prob
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        log_s, log_a = original(self, *args, **kwargs)
        calls["n"] += 1
        return (log_s * float("nan"), log_a) if calls["n"] >= 3 else (log_s, log_a)

    monkeypatch.setattr(PredecessorModel, "log_prob", poisoned)
    with pytest.raises(UserError, match="loss/flow_state' is nan"):
        base.train_policy("gpril", wm, data, out=tmp_path / "nan", preset="tiny", steps=6, progress=False)
    monkeypatch.setattr(PredecessorModel, "log_prob", original)
    monkeypatch.setattr(PredecessorModel, "sample",
                        lambda self, target: (target * float("nan"), torch.zeros(len(target), 3)))
    with pytest.raises(UserError, match="non-finite samples"):
        base.train_policy("gpril", wm, data, out=tmp_path / "nan2", preset="tiny", steps=6, progress=False)


# --------------------------------------------------------------------------------- learning


def _threshold_expert(name, episodes=6, length=12):
    """2-D random walks (third coordinate 0) whose expert action is 1 iff x > 0 (3 actions)."""
    from wmil.data import load
    from wmil.data.storage import DatasetWriter, Episode

    rng = np.random.default_rng(7)
    with DatasetWriter(name, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(3)) as writer:
        for e in range(episodes):
            obs = np.zeros((length + 1, 3), np.float32)
            obs[:, :2] = rng.uniform(-1, 1, (length + 1, 2))
            actions = (obs[:-1, 0] > 0).astype(np.int64)
            terms = np.zeros(length, bool)
            terms[-1] = True
            writer.add(Episode(obs, actions, np.zeros(length), terms, np.zeros(length, bool), seed=e))
    return load(name)


def test_sqil_q_ranks_demo_actions_above_others(tmp_path):
    expert = _threshold_expert("wm/threshold-v0")
    wm = tmp_path / "wm"
    # The dynamics model's features are the normalised observation: the ranking is learnable.
    train_world_model(expert, model="dynamics", preset="tiny", out=wm, steps=2, overrides=WM_TINY, progress=False,
                      device="cpu")
    seed_everything(0)
    config = SqilConfig(**{**SQIL_PRESETS["tiny"], "batch_size": 32, "units": 64, "lr": 3e-3, "gamma": 0.9})
    learner = Sqil(_frozen(wm), expert, config, torch.device("cpu"))
    for step in range(1, 61):
        learner.update(step)
    q = learner.q_on_demo()                                       # (N, 3)
    demo_action = learner.expert.action[torch.as_tensor(learner.demo_rows)].argmax(-1)
    q_demo = q.gather(-1, demo_action[:, None]).squeeze(-1)
    q_other = q.masked_fill(torch.nn.functional.one_hot(demo_action, 3).bool(), -torch.inf).max(-1).values
    assert (q.argmax(-1) == demo_action).float().mean() > 0.8
    assert (q_demo - q_other).mean() > 0.3


def test_gpril_heldout_flow_likelihood_rises(write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=False)
    seed_everything(0)
    config = GprilConfig(**{**GPRIL_PRESETS["tiny"], "batch_size": 64, "flow_lr": 3e-3})
    learner = Gpril(_frozen(wm), data, config, torch.device("cpu"))
    before_s, before_a = learner.heldout_log_likelihood()
    for step in range(1, 31):
        learner.update(step)
    after_s, after_a = learner.heldout_log_likelihood()
    assert after_s > before_s + 10.0, (before_s, after_s)
    assert after_a > before_a, (before_a, after_a)
