"""Recording rollouts of policies in gymnasium environments.

Episode k of a build is reset with env seed ``seed + k`` and acts with a generator seeded from
``(seed, k)``, so its content depends only on k: the same seed gives an identical dataset with
any number of workers. Episodes are yielded whole, in index order, as soon as they (and all
earlier ones) finish, so the caller can flush them to disk and memory stays bounded.

With ``workers > 1`` the copies run in a :class:`gymnasium.vector.AsyncVectorEnv` with
autoreset disabled; each finished copy is reset explicitly with its next episode's seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Optional

import gymnasium as gym
import numpy as np

from wmil.data.policies import Policy, make_policy
from wmil.data.storage import Episode
from wmil.envs import EnvConfig, make_env


@dataclass(frozen=True)
class Part:
    """A block of consecutive episodes recorded with one policy."""

    policy: str
    """'random', 'expert', 'module:callable', a TorchScript .pt or an SB3 .zip."""
    epsilon: float
    """Probability of a random action (discrete) or relative Gaussian noise (continuous)."""
    episodes: int
    """Number of episodes in this block."""


#: Per-step info keys kept in the dataset (others, e.g. the privileged state, are dropped).
RECORDED_INFO_KEYS = ("is_success",)


class _Recorder:
    """Accumulates one episode of one environment copy."""

    def __init__(self, policy_for_part: dict[int, Policy], action_space: gym.Space):
        self.policy_for_part = policy_for_part
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.action_dtype = np.int64 if self.discrete else action_space.dtype
        self.index = -1

    def start(self, index: int, part: int, rng: np.random.Generator, obs, info: dict) -> None:
        self.index = index
        self.policy = self.policy_for_part[part]
        self.policy.reset(rng)
        self.obs, self.actions, self.rewards, self.terms, self.truncs = [obs], [], [], [], []
        self.infos = {key: [info.get(key, 0.0)] for key in RECORDED_INFO_KEYS if key in info}

    def act(self, obs, info: dict):
        return self.policy.act(obs, info.get("state") if self.policy.needs_state else None)

    def step(self, action, obs, reward, terminated, truncated, info: dict) -> Optional[Episode]:
        self.actions.append(action)
        self.obs.append(obs)
        self.rewards.append(reward)
        self.terms.append(terminated)
        self.truncs.append(truncated)
        for key in RECORDED_INFO_KEYS:
            if key in info:
                self.infos.setdefault(key, [0.0] * (len(self.obs) - 1)).append(info[key])
        if not (terminated or truncated):
            return None
        return Episode(
            observations=np.stack(self.obs),
            actions=np.asarray(self.actions, dtype=self.action_dtype),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terms, dtype=bool),
            truncations=np.asarray(self.truncs, dtype=bool),
            infos={key: np.asarray(values, dtype=np.float32) for key, values in self.infos.items()},
        )


def _plan(parts: list[Part]) -> np.ndarray:
    """Part index of every episode index."""
    return np.concatenate([np.full(p.episodes, i, dtype=np.int64) for i, p in enumerate(parts)])


def episode_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _policies(parts: list[Part], action_space, env_id) -> dict[int, Policy]:
    return {i: make_policy(p.policy, action_space, env_id, p.epsilon) for i, p in enumerate(parts)}


def collect(env_config: EnvConfig, parts: list[Part], seed: int = 0, workers: int = 1,
            protocol=None) -> Iterator[Episode]:
    """Yield the episodes of ``parts`` in index order (episode.seed = its env seed), under the
    evaluation ``protocol`` (:mod:`wmil.envs.protocols`; None: the environment's own)."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    plan = _plan(parts)
    if len(plan) == 0:
        return
    if workers <= 1:
        yield from _collect_single(env_config, parts, plan, seed, protocol)
    else:
        yield from _collect_vector(env_config, parts, plan, seed, min(workers, len(plan)), protocol)


def _collect_single(env_config, parts, plan, seed, protocol=None) -> Iterator[Episode]:
    env = make_env(env_config, protocol)
    try:
        recorder = _Recorder(_policies(parts, env.action_space, env_config.env_id), env.action_space)
        for index, part in enumerate(plan):
            obs, info = env.reset(seed=seed + index)
            recorder.start(index, int(part), episode_rng(seed, index), obs, info)
            episode = None
            while episode is None:
                action = recorder.act(obs, info)
                obs, reward, terminated, truncated, info = env.step(action)
                episode = recorder.step(action, obs, float(reward), bool(terminated), bool(truncated), info)
            episode.seed = seed + index
            yield episode
    finally:
        env.close()


def _info_at(infos: dict, i: int) -> dict:
    return {k: v[i] for k, v in infos.items() if not k.startswith("_") and infos.get("_" + k, np.ones(i + 1, bool))[i]}


def _collect_vector(env_config, parts, plan, seed, workers, protocol=None) -> Iterator[Episode]:
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode

    env = AsyncVectorEnv([functools.partial(make_env, env_config, protocol)] * workers,
                         autoreset_mode=AutoresetMode.DISABLED)
    try:
        single_space = env.single_action_space
        recorders = [_Recorder(_policies(parts, single_space, env_config.env_id), single_space)
                     for _ in range(workers)]
        next_index = workers
        obs, infos = env.reset(seed=[seed + i for i in range(workers)])
        for i, rec in enumerate(recorders):
            rec.start(i, int(plan[i]), episode_rng(seed, i), obs[i], _info_at(infos, i))
        step_infos = [_info_at(infos, i) for i in range(workers)]
        finished: dict[int, Episode] = {}
        emit = 0
        active = np.ones(workers, dtype=bool)
        while emit < len(plan):
            actions = [rec.act(obs[i], step_infos[i]) if active[i] else single_space.sample()
                       for i, rec in enumerate(recorders)]
            obs, rewards, terms, truncs, infos = env.step(np.asarray(actions))
            done = np.zeros(workers, dtype=bool)
            for i, rec in enumerate(recorders):
                step_infos[i] = _info_at(infos, i)
                if not active[i]:
                    done[i] = bool(terms[i] or truncs[i])
                    continue
                episode = rec.step(actions[i], obs[i], float(rewards[i]), bool(terms[i]), bool(truncs[i]), step_infos[i])
                if episode is not None:
                    episode.seed = seed + rec.index
                    finished[rec.index] = episode
                    done[i] = True
            if done.any():
                seeds = [None] * workers
                assigned = {}
                for i in np.flatnonzero(done):
                    if next_index < len(plan):
                        seeds[i], assigned[i] = seed + next_index, next_index
                        next_index += 1
                    else:
                        active[i] = False  # kept stepping (and ignored) until the rest finish
                obs, reset_infos = env.reset(seed=seeds, options={"reset_mask": done})
                for i, index in assigned.items():
                    step_infos[i] = _info_at(reset_infos, i)
                    recorders[i].start(index, int(plan[index]), episode_rng(seed, index), obs[i], step_infos[i])
            while emit in finished:
                yield finished.pop(emit)
                emit += 1
    finally:
        env.close()
