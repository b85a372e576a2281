"""The reward check of a world model, on models where the answer is known: a model whose
imagined dynamics are the data's own passes it; one that ignores the action cannot."""

import gymnasium as gym
import numpy as np
import torch
from helpers import write_episodes

from wmil.eval.reward_check import candidate_actions, reward_check
from wmil.types import DataSpec, State


def _counter_episodes(n, length, n_actions, seed):
    """s_{t+1} = s_t + e_{a_t} / 10 (a counter per action) with uniformly random expert actions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = [np.zeros(n_actions, np.float32)]
        actions = rng.integers(0, n_actions, length)
        for a in actions:
            obs.append(obs[-1] + np.eye(n_actions, dtype=np.float32)[a] / 10)
        out.append((np.stack(obs), actions, False))
    return out


class CounterModel(torch.nn.Module):
    """The counter dynamics, exactly (``blind``: the next state ignores the action)."""

    def __init__(self, spec, blind=False):
        super().__init__()
        self.spec, self.blind, self.feature_dim = spec, blind, spec.obs_shape[0]
        self.register_buffer("anchor", torch.zeros(1))

    def _state(self, x):
        return State(deter=x, stoch=x[..., :0])

    def initial(self, batch_size):
        return self._state(torch.zeros(batch_size, self.feature_dim))

    def observe(self, obs, prev_action, is_first, state=None):
        return self._state(obs.float()), self._state(obs.float())

    def imagine_step(self, state, action):
        step = torch.full_like(action, 1.0 / action.shape[-1]) if self.blind else action
        return self._state(state.deter + step / 10 + 0.0 * torch.rand_like(state.deter))

    def features(self, state, mode="sample"):
        return state.deter


def test_an_exact_model_passes_and_an_action_blind_one_fails(minari_root):
    n_actions = 3
    expert = write_episodes("rc/counter-v0", _counter_episodes(6, 30, n_actions, seed=0),
                            gym.spaces.Box(-np.inf, np.inf, (n_actions,), np.float32), gym.spaces.Discrete(n_actions))
    spec = DataSpec((n_actions,), "float32", n_actions, True)
    exact = reward_check(CounterModel(spec), expert, horizon=5, starts=64)
    assert exact["reward_check/accuracy"] == 1.0 and exact["reward_check/margin"] > 0
    assert exact["reward_check/chance"] == 1 / 3
    assert {f"reward_check/accuracy_action{c}" for c in range(3)} <= set(exact)
    blind = reward_check(CounterModel(spec, blind=True), expert, horizon=5, starts=64)
    assert blind["reward_check/accuracy"] == 0.0          # every candidate ties: none is strictly best
    assert blind["reward_check/margin"] == 0.0


def test_continuous_candidates_and_common_random_numbers(minari_root):
    """Continuous actions: the expert's action against perturbed ones; the model's noise is the
    same for every candidate (a noisy but exact-on-average model still ranks correctly)."""
    rng = np.random.default_rng(1)
    episodes = []
    for _ in range(4):
        actions = rng.uniform(-1, 1, (20, 2)).astype(np.float32)
        obs = np.concatenate([np.zeros((1, 2), np.float32), np.cumsum(actions, 0) / 10]).astype(np.float32)
        episodes.append((obs, actions, False))
    expert = write_episodes("rc/cont-v0", episodes, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                            gym.spaces.Box(-1, 1, (2,), np.float32))
    spec = DataSpec((2,), "float32", 2, False, (-1.0, -1.0), (1.0, 1.0))

    class Noisy(CounterModel):
        def imagine_step(self, state, action):
            return self._state(state.deter + action / 10 + 0.002 * torch.randn_like(state.deter))

    result = reward_check(Noisy(spec), expert, horizon=4, starts=48, perturbations=6, alpha=0.5)
    assert result["reward_check/chance"] == 1 / 7
    assert result["reward_check/pairwise"] > 0.95 and result["reward_check/accuracy"] > 0.8


def test_saturated_expert_actions_are_perturbed_inwards(minari_root):
    """A bang-bang expert (every action on a bound): a perturbation is reflected into the box, so
    no candidate ties with the expert's action, and an exact model passes the check. Clipped
    perturbations would land on the expert's action for every outward draw and fail it."""
    rng = np.random.default_rng(2)
    episodes = []
    for _ in range(4):
        actions = rng.choice([-1.0, 1.0], (20, 2)).astype(np.float32)
        obs = np.concatenate([np.zeros((1, 2), np.float32), np.cumsum(actions, 0) / 10]).astype(np.float32)
        episodes.append((obs, actions, False))
    expert = write_episodes("rc/bang-v0", episodes, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                            gym.spaces.Box(-1, 1, (2,), np.float32))
    spec = DataSpec((2,), "float32", 2, False, (-1.0, -1.0), (1.0, 1.0))
    actions = torch.as_tensor(np.concatenate([e[1] for e in episodes]))
    candidates, index = candidate_actions(actions, spec, 8, 0.2, torch.Generator().manual_seed(0))
    perturbed = candidates[1:]
    assert (index == 0).all() and perturbed.abs().max() <= 1.0
    assert ((perturbed - actions[None]).abs() > 0).all()          # every coordinate moved, inwards
    assert (perturbed * actions[None] < 1.0).all()
    result = reward_check(CounterModel(spec), expert, horizon=4, starts=48)
    assert result["reward_check/accuracy"] == 1.0 and result["reward_check/pairwise"] == 1.0
