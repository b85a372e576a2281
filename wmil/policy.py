"""Deployable policies: ``reset()`` then ``act(obs) -> action`` in the real environment.

A latent policy keeps the world model's recurrent state: every real observation is filtered
through the encoder and the posterior (``obs_step``) with the previous action, and the actor
acts on the resulting features. Actions come back in the environment's format (an int for
Discrete spaces, a float32 array for Box spaces).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from wmil.types import DataSpec


class DeployedPolicy(nn.Module):
    """Base class: converts between environment observations/actions and tensors."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec
        self.run_config: dict = {}

    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    def reset(self) -> None:
        """Call at the start of every episode."""

    def _obs(self, obs) -> torch.Tensor:
        obs = np.asarray(obs)
        if obs.dtype == np.bool_:  # a raw MinAtar grid (H, W, C): converted as recording did
            from wmil.envs.minatar import as_model_obs

            obs = as_model_obs(obs, self.spec.obs_shape)
        dtype = torch.uint8 if self.spec.pixels else torch.float32
        return torch.as_tensor(obs, dtype=dtype, device=self.device).unsqueeze(0)  # (1, *O)

    def _to_env(self, action: torch.Tensor):
        """(1, A) one-hot or continuous action → the environment's action."""
        if self.spec.discrete:
            return int(action[0].argmax())
        return action[0].detach().cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True):
        raise NotImplementedError


class FilteringPolicy(DeployedPolicy):
    """A policy that keeps a world model's state of the episode so far: each real observation
    is filtered through the model (``obs_step``) together with the previous action."""

    def __init__(self, world_model, spec: DataSpec):
        super().__init__(spec)
        self.world_model = world_model
        self.state = None
        self.prev_action: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.state = self.world_model.initial(1)
        self.prev_action = torch.zeros(1, self.spec.action_dim, device=self.device)
        self._first = True

    def filter(self, obs: torch.Tensor):
        """The model's state after observation ``obs (1, *O)``."""
        if self.state is None:
            self.reset()
        is_first = torch.tensor([self._first], device=self.device)
        self.state = self.world_model.obs_step(self.state, self.prev_action, obs, is_first)
        self._first = False
        return self.state

    def taken(self, action: torch.Tensor):
        """Record the action ``(1, A)`` taken (the next filtering step needs it); returns it in
        the environment's format."""
        self.prev_action = action
        return self._to_env(action)


class LatentPolicy(FilteringPolicy):
    """Actor on world-model features, filtering real observations through the posterior."""

    def __init__(self, world_model, actor, spec: DataSpec, features: str = "sample"):
        super().__init__(world_model, spec)
        self.actor = actor
        self.features = features  # the world model's features mode the actor was trained on

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True):
        state = self.filter(self._obs(obs))
        action, _, _ = self.actor(self.world_model.features(state, self.features), deterministic=deterministic)
        return self.taken(action)
