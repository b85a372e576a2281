"""Deployable policies: ``reset()`` then ``act(obs) -> action`` in the real environment.

A latent policy keeps the world model's recurrent state: every real observation is filtered
through the encoder and the posterior (``obs_step``) with the previous action, and the actor
acts on the resulting features. Actions come back in the environment's format (an int for
Discrete spaces, a float32 array for Box spaces).

Every policy also acts on a batch of environment copies at once (``act_batch``): one forward
pass for N observations, with a per-copy flag marking the first step of a new episode (that
copy's recurrent state starts afresh). ``act`` is the batch of one, so the two agree.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from wmil.types import DataSpec


class DeployedPolicy(nn.Module):
    """Base class: converts between environment observations/actions and tensors. Subclasses
    implement :meth:`decide`, the batched step."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec
        self.run_config: dict = {}
        self._new_episode = True

    @property
    def stochastic(self) -> bool:
        """Whether 'sample' and 'greedy' differ: False for a policy with no learned action
        distribution (BC trained with the 'mse' loss), which acts with its mode either way."""
        return True

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    def reset(self) -> None:
        """Call at the start of every episode (of :meth:`act`; :meth:`act_batch` takes flags)."""
        self._new_episode = True

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True):
        """The action for observation ``obs`` of the episode in progress, in the env's format."""
        first, self._new_episode = self._new_episode, False
        return self.act_batch(np.asarray(obs)[None], [first], deterministic)[0]

    @torch.no_grad()
    def act_batch(self, obs, first, deterministic: bool = True) -> list:
        """Actions for ``obs (N, *obs_shape)`` of N environment copies (a list in the env's
        format); ``first (N,)`` marks the copies whose episode starts with this observation."""
        obs_t = self._obs(obs)
        first_t = torch.as_tensor(np.asarray(first, dtype=bool), device=self.device)
        if first_t.shape != obs_t.shape[:1]:
            raise ValueError(f"act_batch: {len(first_t)} first-step flags for {len(obs_t)} observations")
        action = self.decide(obs_t, first_t, deterministic)
        return self._to_env(action)

    def decide(self, obs: torch.Tensor, first: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """``obs (N, *O)`` tensors, ``first (N,)`` bool -> actions ``(N, A)`` (one-hot when discrete)."""
        raise NotImplementedError

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = False):
        """Stable-Baselines3's call: ``(actions, state)`` for one observation or a batch
        ``(N, *obs_shape)``. ``state`` is what the previous call returned (None: fresh episodes;
        it is None throughout for policies without memory); ``episode_start (N,)`` marks the
        copies whose episode starts with this observation. Unlike :meth:`act`, the recurrent
        state is passed in and out rather than kept in the policy."""
        obs = np.asarray(observation)
        batched = obs.ndim == len(self.spec.obs_shape) + 1
        rows = obs if batched else obs[None]
        n = len(rows)
        if episode_start is None:
            first = np.full(n, state is None)
        else:
            first = np.asarray(episode_start, dtype=bool).reshape(n)
        self.set_memory(state)
        actions = np.asarray(self.act_batch(rows, first, deterministic))
        return (actions if batched else actions[0]), self.memory()

    def memory(self):
        """The recurrent state :meth:`predict` hands back (None: this policy keeps none)."""
        return None

    def set_memory(self, memory) -> None:
        """Continue from a :meth:`memory` (None: start afresh)."""

    def _obs(self, obs) -> torch.Tensor:
        """Environment observations ``(N, *env shape)`` -> model inputs ``(N, *O)``."""
        obs = np.asarray(obs)
        if obs.dtype == np.bool_:  # raw MinAtar grids (N, H, W, C): converted as recording did
            from wmil.envs.minatar import as_model_obs

            obs = np.stack([as_model_obs(row, self.spec.obs_shape) for row in obs])
        dtype = torch.uint8 if self.spec.pixels else torch.float32
        return torch.as_tensor(obs, dtype=dtype, device=self.device)

    def _to_env(self, action: torch.Tensor) -> list:
        """(N, A) one-hot or continuous actions → N actions in the environment's format."""
        if self.spec.discrete:
            return [int(i) for i in action.argmax(-1).tolist()]
        return list(action.detach().cpu().numpy().astype(np.float32))


class FilteringPolicy(DeployedPolicy):
    """A policy that keeps a world model's state of the episode so far, one row per environment
    copy: each real observation is filtered through the model (``obs_step``) together with the
    previous action (zero, and the state reset, where a copy's episode starts)."""

    def __init__(self, world_model, spec: DataSpec):
        super().__init__(spec)
        self.world_model = world_model
        self.state = None
        self.prev_action: Optional[torch.Tensor] = None

    def reset(self) -> None:
        super().reset()
        self.state = None

    def memory(self):
        return None if self.state is None else (self.state, self.prev_action)

    def set_memory(self, memory) -> None:
        self.state, self.prev_action = (None, None) if memory is None else memory

    def filter(self, obs: torch.Tensor, first: torch.Tensor):
        """The model's state after observations ``obs (N, *O)``; ``first (N,)`` bool."""
        n = len(obs)
        if self.state is None or self.prev_action is None or len(self.prev_action) != n:
            self.state = self.world_model.initial(n)
            self.prev_action = torch.zeros(n, self.spec.action_dim, device=self.device)
            first = torch.ones_like(first)
        prev_action = torch.where(first.unsqueeze(-1), torch.zeros_like(self.prev_action), self.prev_action)
        self.state = self.world_model.obs_step(self.state, prev_action, obs, first)
        return self.state

    def taken(self, action: torch.Tensor) -> torch.Tensor:
        """Record the actions ``(N, A)`` taken (the next filtering step needs them); returns them."""
        self.prev_action = action
        return action


class LatentPolicy(FilteringPolicy):
    """Actor on world-model features, filtering real observations through the posterior."""

    def __init__(self, world_model, actor, spec: DataSpec, features: str = "sample"):
        super().__init__(world_model, spec)
        self.actor = actor
        self.features = features  # the world model's features mode the actor was trained on

    def decide(self, obs: torch.Tensor, first: torch.Tensor, deterministic: bool) -> torch.Tensor:
        state = self.filter(obs, first)
        action, _, _ = self.actor(self.world_model.features(state, self.features), deterministic=deterministic)
        return self.taken(action)
