"""SQIL in the world model: its targets against hand-computed values, bad input, and a learning
check that can fail (fixed seeds)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import WM_TINY, frozen, tiny_world_model, write_episodes

from wmil.algos.sqil import Sqil, SqilConfig, soft_value, sqil_targets
from wmil.errors import UserError
from wmil.runs import seed_everything
from wmil.train.policy import train_policy


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


def test_bad_input(synthetic_worlds, tmp_path, write_dataset):
    wm, data, world_model = synthetic_worlds("rssm", True)
    continuous = write_dataset("wm/other-v0", [6, 7], discrete=False)
    for algo in ("sqil", "gpril"):
        with pytest.raises(UserError, match="continuous|Box"):
            train_policy(algo, wm, continuous, out=tmp_path / f"x-{algo}", preset="tiny", progress=False)
        # Directly, too: the learner names the mismatch in one line.
        from wmil.algos.base import algorithm_class

        cls = algorithm_class(algo)
        with pytest.raises(UserError, match="action space"):
            cls(world_model, continuous, cls.config_cls.preset("tiny"), torch.device("cpu"))
    with pytest.raises(UserError, match="predecessors"):
        train_policy("gpril", wm, data, out=tmp_path / "p", preset="tiny", progress=False,
                     overrides={"predecessors": "nowhere"})
    with pytest.raises(UserError, match="gamma"):
        train_policy("sqil", wm, data, out=tmp_path / "g", preset="tiny", progress=False, overrides={"gamma": "1.0"})
    with pytest.raises(UserError, match="entropy_discrete"):
        train_policy("sqil", wm, data, out=tmp_path / "t", preset="tiny", progress=False,
                     overrides={"entropy_discrete": "0"})


def _threshold_expert(name, episodes=6, length=12):
    """2-D random walks (third coordinate 0) whose expert action is 1 iff x > 0 (3 actions)."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(episodes):
        obs = np.zeros((length + 1, 3), np.float32)
        obs[:, :2] = rng.uniform(-1, 1, (length + 1, 2))
        out.append((obs, (obs[:-1, 0] > 0).astype(np.int64), True))
    return write_episodes(name, out, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(3))


def test_sqil_q_ranks_demo_actions_above_others(tmp_path):
    expert = _threshold_expert("wm/threshold-v0")
    # The dynamics model's features are the normalised observation: the ranking is learnable.
    wm = tiny_world_model(expert, tmp_path / "wm", "dynamics", steps=2,
                          overrides={**WM_TINY, "seq_len": "6", "open_loop_context": "2"})
    seed_everything(0)
    config = SqilConfig.preset("tiny", {"batch_size": 32, "units": 64, "critic_lr": 3e-3, "gamma": 0.9})
    learner = Sqil(frozen(wm), expert, config, torch.device("cpu"))
    for step in range(1, 61):
        learner.update(step)
    q = learner.q_on_demo()                                       # (N, 3)
    demo_action = learner.expert.action[torch.as_tensor(learner.action_rows)].argmax(-1)
    q_demo = q.gather(-1, demo_action[:, None]).squeeze(-1)
    q_other = q.masked_fill(torch.nn.functional.one_hot(demo_action, 3).bool(), -torch.inf).max(-1).values
    assert (q.argmax(-1) == demo_action).float().mean() > 0.8
    assert (q_demo - q_other).mean() > 0.3


def test_the_imagined_half_ranks_the_actions_the_demos_leave_untried(tmp_path):
    """Two actions, each demonstrated in half of the states (1 iff x > 0, as CartPole's expert
    uses both): on demos alone a state's other action is never trained and Q generalises across
    the actions. The default λ_samp (1 on vectors) ranks the demo action first on ≥ 90 % of demo
    states; the paper's Lunar Lander value 1e-6 (the imagined half all but off) ranks worse."""
    rng = np.random.default_rng(7)
    episodes = []
    for _ in range(6):
        obs = np.zeros((13, 3), np.float32)
        obs[:, :2] = rng.uniform(-1, 1, (13, 2))
        episodes.append((obs, (obs[:-1, 0] > 0).astype(np.int64), True))
    expert = write_episodes("wm/threshold2-v0", episodes, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                            gym.spaces.Discrete(2))
    wm = tiny_world_model(expert, tmp_path / "wm", "dynamics", steps=2,
                          overrides={**WM_TINY, "seq_len": "6", "open_loop_context": "2"})

    def accuracy(**overrides):
        seed_everything(0)
        config = SqilConfig.preset("tiny", {"batch_size": 32, "units": 64, "critic_lr": 3e-3, "gamma": 0.9,
                                            **overrides})
        learner = Sqil(frozen(wm), expert, config, torch.device("cpu"))
        for step in range(1, 101):
            learner.update(step)
        demo_action = learner.expert.action[torch.as_tensor(learner.action_rows)].argmax(-1)
        return learner.lambda_samp, float((learner.q_on_demo().argmax(-1) == demo_action).float().mean())

    (default, balanced), (_, demos_only) = accuracy(), accuracy(lambda_samp=1e-6)
    assert default == 1.0
    assert balanced >= 0.9 and balanced > demos_only + 0.05, (balanced, demos_only)


def test_default_lambda_samp_by_kind_of_task():
    from wmil.algos.sqil import default_lambda_samp
    from wmil.types import DataSpec

    vectors = DataSpec(obs_shape=(4,), obs_dtype="float32", action_dim=2, discrete=True)
    pixels = DataSpec(obs_shape=(3, 64, 64), obs_dtype="uint8", action_dim=5, discrete=True)
    continuous = DataSpec(obs_shape=(3,), obs_dtype="float32", action_dim=1, discrete=False,
                          action_low=(-2.0,), action_high=(2.0,))
    assert [default_lambda_samp(s) for s in (vectors, pixels, continuous)] == [1.0, 0.01, 1.0]


def test_sqil_q_grows_toward_its_known_value_on_a_chain(tmp_path):
    """A demonstrated chain of T = 30 steps into a terminal state, action 0 of 2 at every step:
    Q(s_t, a_E) = 1 + γ·V(s_{t+1}) with V ≥ Q(·, a_E), so Q is at least (1 − γ^(T−t))/(1 − γ)
    (→ r/(1 − γ) = 10 at γ = 0.9) and at most that plus the soft value's α·log 2 a step. With the
    default target network Q climbs there within a few hundred updates; a target network as
    slow as SAC's (τ = 0.005) leaves it far below in the same budget."""
    T, gamma = 30, 0.9
    obs = np.zeros((T + 1, 3), np.float32)
    obs[:, 0] = np.arange(T + 1) / T
    expert = write_episodes("wm/chain-v0", [(obs, np.zeros(T, np.int64), True)] * 3,
                            gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Discrete(2))
    wm = tiny_world_model(expert, tmp_path / "wm", "dynamics", steps=2,
                          overrides={**WM_TINY, "seq_len": "6", "open_loop_context": "2"})
    steps_left = torch.as_tensor(T - np.arange(T), dtype=torch.float32)            # (T,) for t = 0 … T−1
    lower = (1 - gamma ** steps_left) / (1 - gamma)
    upper = lower * (1 + math.log(2))

    def q_after(updates, **overrides):
        seed_everything(0)
        config = SqilConfig.preset("tiny", {"batch_size": 32, "units": 64, "critic_lr": 3e-3, "gamma": gamma,
                                            **overrides})
        learner = Sqil(frozen(wm), expert, config, torch.device("cpu"))
        fractions = []
        for step in range(1, updates + 1):
            fractions.append(learner.update(step)["q/demo_fraction"])
        q = learner.q_on_demo()[:T, 0]                                         # the first episode's Q(s_t, a_E)
        return q, fractions

    q, fractions = q_after(400)
    assert np.mean(fractions[-50:]) > 3 * np.mean(fractions[:50])            # it grows …
    early = slice(0, 10)                                                      # … to its known value
    assert (q[early] >= 0.8 * lower[early]).all() and (q[early] <= 1.1 * upper[early]).all(), (q, lower)
    slow, _ = q_after(400, target_tau=0.005)
    assert slow[early].mean() < 0.6 * lower[early].mean(), slow


def test_imagined_states_stay_inside_the_data(tmp_path):
    """Imagined transitions are clamped into the range of the features of the world data and
    the demos: an untrained policy in a barely trained model drives states far outside it."""
    expert = _threshold_expert("wm/box-v0")
    wm = tiny_world_model(expert, tmp_path / "wm", "dynamics", steps=2,
                          overrides={**WM_TINY, "seq_len": "6", "open_loop_context": "2"})
    seed_everything(0)
    learner = Sqil(frozen(wm), expert, SqilConfig.preset("tiny", {"horizon": 30}), torch.device("cpu"))
    low, high = learner.box
    both = torch.cat([learner.world.features, learner.expert.features])
    torch.testing.assert_close(low, both.min(0).values)
    torch.testing.assert_close(high, both.max(0).values)
    z, _, z_next = learner.imagined_batch()
    assert ((z >= low) & (z <= high)).all() and ((z_next >= low) & (z_next <= high)).all()
    assert ((z == low) | (z == high)).any()          # some did leave the box and were clamped
