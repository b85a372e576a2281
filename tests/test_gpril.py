"""GPRIL in the world model: geometric offsets, the offline-data predecessors, the NaN guard of
its flows, and a learning check that can fail (fixed seeds)."""

import numpy as np
import pytest
import torch
from helpers import frozen, tiny_world_model

from wmil.algos.gpril import Gpril, GprilConfig, PredecessorModel, geometric_offsets
from wmil.errors import UserError
from wmil.runs import seed_everything
from wmil.train.policy import load_policy, train_policy


def _world(write_dataset, tmp_path, discrete):
    data = write_dataset(f"wm/{'d' if discrete else 'c'}-v0", [9, 12, 8, 10], discrete=discrete)
    return data, tiny_world_model(data, tmp_path / f"wm-{discrete}", steps=2,
                                  overrides={"seq_len": "6", "open_loop_context": "2"})


def test_geometric_offsets_stay_inside_episodes():
    """offsets='within' (wrap=False; the default was this until wrap-around replaced it)."""
    rng = np.random.default_rng(0)
    offsets, n_actions = np.array([0, 4, 10, 11]), np.array([3, 5, 0, 40])  # the third episode has no action
    start, target = geometric_offsets(rng, offsets, n_actions, 5000, gamma=0.8, wrap=False)
    episode = np.searchsorted(offsets, start, side="right") - 1
    episode = np.where(n_actions[episode] == 0, episode - 1, episode)  # never sampled; guards the lookup
    assert (n_actions[episode] > 0).all()
    assert (start >= offsets[episode]).all() and (start < offsets[episode] + n_actions[episode]).all()
    assert (target > start).all() and (target <= offsets[episode] + n_actions[episode]).all()
    # γ = 0: s̄ is always the next state; a long episode shows the geometric mean γ/(1−γ)
    start, target = geometric_offsets(rng, offsets, n_actions, 100, gamma=0.0, wrap=False)
    assert (target == start + 1).all()
    start, target = geometric_offsets(rng, np.array([0]), np.array([10_000]), 20_000, gamma=0.5, wrap=False)
    assert abs((target - start - 1).mean() - 1.0) < 0.05
    assert abs((target - start - 1 == 0).mean() - 0.5) < 0.02


def test_wrapped_offsets_are_exactly_geometric():
    """With wrap-around (the default) j ~ Geom(1 − γ) whatever the episode lengths: its mean is
    γ/(1 − γ) and P(j) = (1 − γ)γ^j, even in rollouts of 20 steps at γ = 0.9 (mean offset 9),
    where keeping targets inside the rollout halves the mean offset."""
    rng = np.random.default_rng(0)
    gamma, n = 0.9, 200_000
    offsets, n_actions = np.arange(64) * 21, np.full(64, 20)                 # 64 imagined rollouts of 20 steps
    start, target = geometric_offsets(rng, offsets, n_actions, n, gamma)
    total = 64 * 21
    j = (target - start) % total - 1
    assert abs(j.mean() - gamma / (1 - gamma)) < 0.15
    pmf = np.bincount(j, minlength=30)[:30] / n
    expected = (1 - gamma) * gamma ** np.arange(30)
    assert np.abs(pmf - expected).max() < 0.005
    # The start is a logged step (never an episode's last state); the target any state of the cycle.
    assert ((start - offsets[start // 21]) < 20).all() and (target >= 0).all() and (target < total).all()
    start, within = geometric_offsets(rng, offsets, n_actions, n, gamma, wrap=False)
    assert (within - start - 1).mean() < 0.6 * gamma / (1 - gamma)


def test_wrapped_offsets_cross_into_the_next_episode_by_hand():
    """Episodes of 2 and 1 actions laid end to end: rows 0-2 (s0 s1 s2) and 3-4 (s0' s1'). From
    row 1 with j = 2 the target is 3 steps on round the cycle 0 1 2 3 4 0 …: row 4; with j = 4
    it wraps to row 1."""

    class Fixed:
        """A generator whose draws are set: episode 0, t = 1, then the given offsets j."""

        def __init__(self, j):
            self.j = np.asarray(j)

        def choice(self, n, size, p):
            return np.zeros(size, np.int64)

        def random(self, size):
            return np.full(size, 0.5)                                         # t = ⌊0.5·2⌋ = 1

        def geometric(self, p, size):
            return self.j + 1                                                 # numpy's support starts at 1

    start, target = geometric_offsets(Fixed([0, 2, 4]), np.array([0, 3]), np.array([2, 1]), 3, gamma=0.5)
    assert start.tolist() == [1, 1, 1] and target.tolist() == [2, 4, 1]
    with pytest.raises(ValueError, match="without gaps"):
        geometric_offsets(np.random.default_rng(0), np.array([0, 5]), np.array([2, 1]), 3, gamma=0.5)


def test_gpril_from_offline_data(write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=True)
    out = tmp_path / "policy"
    train_policy("gpril", wm, data, out=out, preset="tiny", steps=3, progress=False, device="cpu",
                 overrides={"predecessors": "data"})
    policy = load_policy(out)
    policy.reset()
    assert 0 <= policy.act(np.zeros(3, np.float32)) < 3


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
        train_policy("gpril", wm, data, out=tmp_path / "nan", preset="tiny", steps=6, progress=False)
    monkeypatch.setattr(PredecessorModel, "log_prob", original)
    monkeypatch.setattr(PredecessorModel, "sample",
                        lambda self, target: (target * float("nan"), torch.zeros(len(target), 3)))
    with pytest.raises(UserError, match="non-finite samples"):
        train_policy("gpril", wm, data, out=tmp_path / "nan2", preset="tiny", steps=6, progress=False)


def test_gpril_heldout_flow_likelihood_rises(write_dataset, tmp_path):
    data, wm = _world(write_dataset, tmp_path, discrete=False)
    seed_everything(0)
    config = GprilConfig.preset("tiny", {"batch_size": 64, "flow_lr": 3e-3})
    learner = Gpril(frozen(wm), data, config, torch.device("cpu"))
    before_s, before_a = learner.heldout_log_likelihood()
    for step in range(1, 31):
        learner.update(step)
    after_s, after_a = learner.heldout_log_likelihood()
    assert after_s > before_s + 10.0, (before_s, after_s)
    assert after_a > before_a, (before_a, after_a)


def test_float_masks_give_zukos_products_and_stay_out_of_checkpoints():
    """The flows' masked layers multiply by a float copy of zuko's boolean mask: the log-densities
    are zuko's own, the checkpoint holds only the boolean masks, and loading a state dict
    refreshes the float copies."""
    import functools

    from torch.nn import functional as F
    from zuko.nn import MaskedLinear

    from wmil.types import DataSpec

    spec = DataSpec(obs_shape=(6,), obs_dtype="float32", action_dim=2, discrete=True)
    config = GprilConfig(flow_units=16, flow_layers=1, flow_passes=3)
    torch.manual_seed(0)
    model = PredecessorModel(6, spec, config)
    layers = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    assert layers and all(hasattr(m, "float_mask") for m in layers)
    assert not any("float_mask" in key for key in model.state_dict())
    s, s_bar = torch.randn(32, 6), torch.randn(32, 6)
    a = F.one_hot(torch.randint(0, 2, (32,)), 2).float()
    ours = model.log_prob(s, a, s_bar)
    for layer in layers:                                         # zuko's own forward: bool mask × weight
        layer.forward = functools.partial(MaskedLinear.forward, layer)
    zukos = model.log_prob(s, a, s_bar)
    for layer in layers:
        del layer.forward
    for x, y in zip(ours, zukos):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    state = model.state_dict()
    for layer in layers:
        layer.float_mask.fill_(1.0)                              # a stale copy …
    model.load_state_dict(state)
    assert all(torch.equal(m.float_mask, m.mask.float()) for m in layers)   # … is refreshed on load
