"""The deterministic dynamics model of VINS (Luo, Xu & Ma 2020, "Learning self-correctable
policies and value functions from demonstrations with negative sampling").

``M(s, a) = s + f([ŝ, a])`` where ``ŝ = (s − μ) / σ`` is the normalised observation and f an
MLP (VINS: two hidden layers of 500 ReLU units) predicting the normalised change s' − s.
Trained with the paper's L2-norm loss (not squared), ``‖M(s, a) − s'‖``, measured in
normalised units so that every coordinate counts on the same scale. It has no latent of its
own: the "state" (``State.deter``) and the features are the normalised observation, the
decoder undoes the normalisation, and ``imagine_step`` applies M. Vector observations only.

``obs_indices`` is the paper's set-up on reduced states ("the model uses the reduced states
and actions to predict the next reduced states"; with ``units=500``, its 2 × 500 network): M
reads and predicts only those coordinates, and carries the others over unchanged.

The normalisation statistics are running estimates over the training batches (when
``running_normalizer``) until :meth:`Dynamics.set_normalizer` fixes them, e.g. to the
statistics of the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from wmil.errors import UserError
from wmil.config import Activation, NonNegInt, OptimizerConfig, PosFloat, PosInt, parse_indices
from wmil.nets import MLP
from wmil.precision import float32
from wmil.types import DataSpec, SequenceBatch
from wmil.types import State
from wmil.world_models.base import WorldModelBase, check_features

Tensor = torch.Tensor


@dataclass(frozen=True)
class DynamicsConfig(OptimizerConfig):
    """VINS dynamics model M(s, a), loss ``‖M(s, a) − s'‖₂`` in normalised units."""

    layers: NonNegInt = 2
    """Hidden layers of the MLP (VINS: 2)."""
    units: PosInt = 200
    """Units per hidden layer (VINS: 500)."""
    act: Activation = "relu"
    """Activation of the hidden layers (VINS: ReLU)."""
    norm: bool = False
    """LayerNorm after each hidden layer."""
    running_normalizer: bool = True
    """Update the input statistics from each training batch until set_normalizer() is called."""
    std_floor: PosFloat = 1e-3
    """Lower bound of the per-coordinate std used to normalise (constant coordinates)."""
    dynamics_scale: PosFloat = 1.0
    """Weight of the L2-norm prediction loss."""
    obs_indices: str = ""
    """Coordinates M reads and predicts, e.g. '0:6,25:28' (the VINS paper's reduced states); the others are carried over unchanged. Empty: all."""

    DEFAULTS: ClassVar = dict(adam_eps=1e-8)  # VINS: Adam with its default epsilon, lr 3e-4
    PRESETS: ClassVar = {
        "tiny": dict(layers=2, units=32),
        "small": dict(),
        "paper": dict(layers=2, units=500),
    }


class Dynamics(WorldModelBase):
    """VINS dynamics model behind the world-model protocol (see the module docstring)."""

    config_cls = DynamicsConfig

    def __init__(self, spec: DataSpec, config: DynamicsConfig):
        super().__init__()
        if spec.pixels:
            raise UserError(f"world model 'dynamics' (VINS) needs vector observations, but the "
                            f"data has pixel observations {tuple(spec.obs_shape)}; use 'rssm' "
                            f"or 'gaussian_rssm'")
        self.spec = spec
        self.config = config
        obs_dim = spec.obs_shape[0]
        indices = parse_indices(config.obs_indices, obs_dim, "obs_indices")
        #: The coordinates M reads and predicts (all by default).
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)
        self.net = MLP(len(indices) + spec.action_dim, len(indices), config.layers, config.units,
                       config.act, config.norm)
        self.feature_dim = obs_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_var", torch.ones(obs_dim))
        self.register_buffer("obs_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("normalizer_fixed", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ normalisation
    @property
    def obs_std(self) -> Tensor:
        return self.obs_var.sqrt().clamp(min=self.config.std_floor)

    def set_normalizer(self, obs_mean, obs_std) -> None:
        """Fix the normalisation to the given per-coordinate mean and std ``(D,)`` (e.g. of the
        whole dataset); running updates stop."""
        mean = torch.as_tensor(np.asarray(obs_mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(obs_std), dtype=torch.float32)
        shape = tuple(self.obs_mean.shape)
        if tuple(mean.shape) != shape or tuple(std.shape) != shape:
            raise UserError(f"set_normalizer: obs_mean and obs_std must have shape {shape}, got "
                            f"{tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all() and (std >= 0).all()):
            raise UserError("set_normalizer: obs_mean/obs_std must be finite with std >= 0")
        self.obs_mean.copy_(mean)
        self.obs_var.copy_(std.pow(2))
        self.normalizer_fixed.fill_(True)

    @torch.no_grad()
    def _update_normalizer(self, obs: Tensor, mask: Optional[Tensor] = None) -> None:
        """Merge the statistics of ``obs (..., D)`` (where ``mask``, if given) into the running
        ones (Chan et al.)."""
        flat = (obs if mask is None else obs[mask]).reshape(-1, obs.shape[-1]).to(torch.float64)
        n_batch = flat.shape[0]
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        n = self.obs_count.item()
        total = n + n_batch
        mean = self.obs_mean.to(torch.float64)
        delta = batch_mean - mean
        m2 = self.obs_var.to(torch.float64) * n + batch_var * n_batch + delta.pow(2) * n * n_batch / total
        self.obs_mean.copy_(mean + delta * n_batch / total)
        self.obs_var.copy_(m2 / total)
        self.obs_count.fill_(total)

    def normalize(self, obs: Tensor) -> Tensor:
        """Raw observations ``(..., D)`` -> normalised ``(..., D)``."""
        return (obs.to(torch.float32) - self.obs_mean) / self.obs_std

    # ------------------------------------------------------------------ protocol
    @property
    def loss_scales(self) -> dict[str, float]:
        return {"dynamics": self.config.dynamics_scale}

    def _wrap(self, normalized: Tensor) -> State:
        return State(deter=normalized, stoch=normalized.new_zeros(*normalized.shape[:-1], 0))

    def _predict(self, normalized: Tensor, action: Tensor) -> Tensor:
        """M in normalised units: ``(..., D), (..., A) -> (..., D)``; coordinates outside
        ``obs_indices`` are carried over."""
        reduced = normalized.index_select(-1, self.indices)
        # The residual sum and everything after it stay float32 under bf16 autocast.
        return normalized.index_add(-1, self.indices, float32(self.net(torch.cat([reduced, action], -1))))

    def initial(self, batch_size: int) -> State:
        return self._wrap(self.obs_mean.new_zeros(batch_size, self.feature_dim))

    def preprocess_obs(self, obs: Tensor) -> Tensor:
        return obs.to(torch.float32)

    def features(self, state: State, mode: str = "sample") -> Tensor:
        check_features(mode)
        return state.deter  # no stochastic part: every mode is the normalised observation

    def decode(self, features: Tensor) -> Tensor:
        return features * self.obs_std + self.obs_mean

    def observe(self, obs: Tensor, prev_action: Tensor, is_first: Tensor,
                state: Optional[State] = None) -> tuple[State, State]:
        self._check_sequence(obs, prev_action, is_first)
        B = is_first.shape[0]
        normalized = self.normalize(obs)                                     # (B, T, D)
        before = (state if state is not None else self.initial(B)).deter    # (B, D)
        previous = torch.cat([before.unsqueeze(1), normalized[:, :-1]], 1)   # (B, T, D)
        prior = self._predict(previous, prev_action)
        # Where an episode starts there is no previous observation: the prior is `initial`.
        prior = torch.where(is_first.unsqueeze(-1), torch.zeros_like(prior), prior)
        return self._wrap(normalized), self._wrap(prior)

    def obs_step(self, state: State, prev_action: Tensor, obs: Tensor, is_first: Tensor) -> State:
        assert tuple(obs.shape[1:]) == tuple(self.spec.obs_shape), \
            f"obs must be (B, *{self.spec.obs_shape}), got {tuple(obs.shape)}"
        return self._wrap(self.normalize(obs))

    def imagine_step(self, state: State, action: Tensor) -> State:
        return self._wrap(self._predict(state.deter, action))

    def loss(self, batch: SequenceBatch) -> tuple[dict[str, Tensor], dict[str, float], State]:
        self._check_sequence(batch.obs, batch.prev_action, batch.is_first)
        if self.training and self.config.running_normalizer and not bool(self.normalizer_fixed):
            self._update_normalizer(batch.obs, batch.mask)
        normalized = self.normalize(batch.obs)                       # (B, T, D)
        # Pairs (obs[t-1], prev_action[t]) -> obs[t] inside an episode (t >= 1, not is_first).
        predicted = self._predict(normalized[:, :-1], batch.prev_action[:, 1:])
        target = normalized[:, 1:]
        valid = ~batch.is_first[:, 1:]                                # (B, T-1)
        if batch.mask is not None:  # padding sits at the end, so mask[t] implies mask[t-1]
            valid = valid & batch.mask[:, 1:]
        valid = valid.to(predicted.dtype)
        count = valid.sum().clamp(min=1.0)
        # The L2 norm (not squared) over the predicted coordinates: (B, T-1).
        error = torch.linalg.vector_norm((predicted - target).index_select(-1, self.indices), dim=-1)
        losses = {"dynamics": (error * valid).sum() / count}
        with torch.no_grad():
            repeat = torch.linalg.vector_norm((normalized[:, :-1] - target).index_select(-1, self.indices), dim=-1)
            metrics = {
                "dynamics_l2": losses["dynamics"].item(),
                "repeat_last_l2": ((repeat * valid).sum() / count).item(),
            }
        return losses, metrics, self._wrap(normalized)


__all__ = ["DynamicsConfig", "Dynamics"]
