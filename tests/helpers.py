"""Synthetic datasets and small helpers shared by the algorithm tests (imported as ``helpers``)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from wmil.runs import RunDir
from wmil.types import State

WM_TINY = {"log_every": "2", "eval_every": "4", "checkpoint_every": "4", "batch_size": "4", "seq_len": "8",
           "open_loop_context": "3", "eval_batches": "1"}
RUN_TINY = {"log_every": "2", "eval_every": "2", "checkpoint_every": "2"}
BOX2 = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT2 = gym.spaces.Box(-1, 1, (2,), np.float32)
BOX4 = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def write_episodes(name, episodes, obs_space, act_space, infos=None):
    """A dataset of ``(obs (T+1, …), actions (T, …), terminated)`` episodes (reward −1 a step)."""
    from wmil.data import load
    from wmil.data.storage import DatasetWriter, Episode

    with DatasetWriter(name, obs_space, act_space) as writer:
        for e, (obs, actions, terminated) in enumerate(episodes):
            T = len(actions)
            terms, truncs = np.zeros(T, bool), np.zeros(T, bool)
            (terms if terminated else truncs)[-1] = True
            extra = {} if infos is None else {"infos": infos[e]}
            writer.add(Episode(obs, actions, -np.ones(T, np.float32), terms, truncs, seed=e, **extra))
    return load(name)


def function_expert(name, discrete, lengths, seed=0):
    """Expert whose action is a function of the current observation: obs ~ N(0, 1)³,
    a = [obs[0] > 0] (Discrete(2)) or a = 0.9·tanh(2·obs[0]) (Box(-1, 1, (1,)))."""
    rng = np.random.default_rng(seed)
    episodes = []
    for T in lengths:
        obs = rng.normal(size=(T + 1, 3)).astype(np.float32)
        if discrete:
            actions = (obs[:-1, 0] > 0).astype(np.int64)
        else:
            actions = (0.9 * np.tanh(2 * obs[:-1, :1])).astype(np.float32)
        episodes.append((obs, actions, True))
    act_space = gym.spaces.Discrete(2) if discrete else gym.spaces.Box(-1, 1, (1,), np.float32)
    return write_episodes(name, episodes, gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), act_space)


def reach_episodes(n, seed, epsilon=0.0, max_steps=25, dim=2):
    """A point reaching the origin: s' = s + 0.1 a, a ∈ [−1, 1]^dim; the expert moves halfway to
    the goal each step (a = clip(−5 s)); the episode terminates within 0.05 of the goal."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n):
        s = rng.uniform(-1, 1, dim).astype(np.float32)
        obs, actions, terminated = [s], [], False
        for _ in range(max_steps):
            a = np.clip(-5 * s, -1, 1)
            if rng.random() < epsilon:
                a = rng.uniform(-1, 1, dim)
            s = (s + 0.1 * a).astype(np.float32)
            actions.append(a.astype(np.float32))
            obs.append(s)
            if np.linalg.norm(s) < 0.05:
                terminated = True
                break
        episodes.append((np.stack(obs), np.stack(actions), terminated))
    return episodes


def discrete_episodes(n, seed, length=30):
    """obs ~ N(0, I₄) i.i.d.; the expert's action is the tercile of obs[0]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        obs = rng.normal(size=(length + 1, 4)).astype(np.float32)
        actions = ((obs[:-1, 0] > -0.43).astype(np.int64) + (obs[:-1, 0] > 0.43)).astype(np.int64)
        out.append((obs, actions, False))
    return out


def tiny_world_model(dataset, out, model="rssm", steps=4, overrides=None):
    """Train (or reuse) a tiny world model on ``dataset`` into run directory ``out``."""
    from wmil.train.world_model import train_world_model

    if not (out / "config.yaml").exists():
        train_world_model(dataset, model=model, preset="tiny", out=out, steps=steps,
                          overrides={**WM_TINY, **(overrides or {})}, progress=False, device="cpu")
    return out


def frozen(run_dir):
    """The world model of a run, loaded with its parameters frozen (as ``imagine`` does)."""
    from wmil.train.world_model import load_world_model

    world_model = load_world_model(run_dir)
    for parameter in world_model.parameters():
        parameter.requires_grad_(False)
    return world_model


def check_action(action, spec):
    """An action in the environment's format and inside its space."""
    if spec.discrete:
        assert isinstance(action, int) and 0 <= action < spec.action_dim
    else:
        assert isinstance(action, np.ndarray) and action.dtype == np.float32 and action.shape == (spec.action_dim,)
        assert np.all(action >= np.array(spec.action_low) - 1e-6) and np.all(action <= np.array(spec.action_high) + 1e-6)


def train_load_act(algo, model_run, expert, out, steps=4):
    """Train ``steps`` updates, load the policy, act on the expert's first observations (the
    in-process and the loaded policy), check the offline metrics, then resume for two more
    updates and check one metric row per logged step."""
    from wmil.eval.offline import offline_metrics
    from wmil.train.policy import load_policy, train_policy

    policy = train_policy(algo, model_run, expert, out=out, preset="tiny", steps=steps, overrides=RUN_TINY,
                          progress=False, device="cpu")
    loaded = load_policy(out)
    obs = expert.episode(0).observations
    loaded.reset()
    for t in range(3):
        check_action(loaded.act(obs[t]), expert.spec)
        check_action(policy.act(obs[t]), expert.spec)
    metrics = offline_metrics(loaded)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    train_policy(algo, model_run, expert, out=out, preset="tiny", steps=steps + 2, overrides=RUN_TINY,
                 progress=False, device="cpu")
    assert [m["step"] for m in RunDir(out, "policy").read_metrics()] == list(range(2, steps + 3, 2))
    return out


class IIDModel(torch.nn.Module):
    """An ideal 'world model' for data whose observations are i.i.d.: the features are the
    observation and the next observation is a fresh N(0, 1) draw whatever the action, so only
    (z, a) consistency can tell expert from imagined transitions."""

    def __init__(self, spec):
        super().__init__()
        self.spec, self.feature_dim = spec, spec.obs_shape[0]

    def _state(self, obs):
        return State(deter=obs.float(), stoch=obs[..., :0].float())

    def initial(self, batch_size):
        return self._state(torch.zeros(batch_size, self.feature_dim))

    def observe(self, obs, prev_action, is_first, state=None):
        return self._state(obs), self._state(obs)

    def obs_step(self, state, prev_action, obs, is_first):
        return self._state(obs)

    def imagine_step(self, state, action):
        return self._state(torch.randn_like(state.deter))

    def features(self, state, mode="sample"):
        return state.deter
