"""The world-model interface every latent imitation algorithm programs against.

A world model filters observed sequences into latent states (``observe``), steps the latent
forward without observations (``imagine_step``, for H-step imagined rollouts) and exposes a
flat feature vector per state (``features``) that actors, critics, discriminators and the
DITTO reward read. Three implementations share it: ``rssm`` (DreamerV2),
``gaussian_rssm`` (VMIL / PlaNet / Dreamer v1) and ``dynamics`` (VINS).

Shape letters: B batch, T time, F features, A action dimension, O an observation shape.
Inputs follow the time alignment of :mod:`wmil.types`: ``prev_action[t]`` led to ``obs[t]``,
so the prior of step t is a function of the state at t-1 and ``prev_action[t]``.
"""

from __future__ import annotations

import typing
from typing import Mapping, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from wmil.config import Features
from wmil.errors import UserError
from wmil.types import DataSpec, SequenceBatch, State

Tensor = torch.Tensor


@runtime_checkable
class WorldModel(Protocol):
    """What every world model provides (an ``nn.Module``)."""

    spec: DataSpec
    feature_dim: int
    """F: width of ``features(state)``."""

    @property
    def loss_scales(self) -> dict[str, float]:
        """Weight of each term of ``loss``; exactly its keys (see :func:`total_loss`)."""

    def initial(self, batch_size: int) -> State:
        """The state before the first observation: ``(B,)``."""

    def preprocess_obs(self, obs: Tensor) -> Tensor:
        """Observations ``(..., *O)`` into the space ``decode`` predicts in (float32; uint8
        pixels become [-0.5, 0.5])."""

    def observe(self, obs: Tensor, prev_action: Tensor, is_first: Tensor,
                state: Optional[State] = None) -> tuple[State, State]:
        """Filter a sequence. ``obs (B, T, *O)``, ``prev_action (B, T, A)``, ``is_first (B, T)``
        bool; ``state`` ``(B,)`` is the state before step 0 (``initial`` when None). The state
        is reset to ``initial`` wherever ``is_first``. Returns ``(posterior, prior)``, both
        ``(B, T)``: the prior of step t has not seen ``obs[t]``."""

    def obs_step(self, state: State, prev_action: Tensor, obs: Tensor, is_first: Tensor) -> State:
        """One filtering step for a deployed policy: ``state (B,)``, ``prev_action (B, A)``,
        ``obs (B, *O)``, ``is_first (B,)`` -> posterior ``(B,)``."""

    def imagine_step(self, state: State, action: Tensor) -> State:
        """One step of the prior: ``state (B,)``, ``action (B, A)`` -> ``(B,)``. Differentiable
        w.r.t. ``action`` and ``state`` (dynamics backprop for continuous actions)."""

    def features(self, state: State, mode: str = "sample") -> Tensor:
        """``(*batch,) -> (*batch, F)`` for ``mode`` 'sample' (F = ``feature_dim``); see
        :data:`FEATURES` for the others (:func:`feature_size` gives their width)."""

    def continue_prob(self, state: State) -> Optional[Tensor]:
        """P(the episode goes on) at ``state``, ``(*batch,)``; None without a continue head.
        Optional: learners treat a model without the method as one without the head."""

    def decode(self, features: Tensor) -> Tensor:
        """Observation prediction ``(*batch, F) -> (*batch, *O)`` in ``preprocess_obs`` space."""

    def loss(self, batch: SequenceBatch) -> tuple[dict[str, Tensor], dict[str, float], State]:
        """Named scalar loss terms (keys == ``loss_scales``), float metrics, and the posterior
        ``(B, T)`` of the batch."""

    def encode_sequence(self, batch: SequenceBatch) -> State:
        """Posterior states ``(B, T)`` of a batch (e.g. expert windows), without gradients."""

    def open_loop(self, batch: SequenceBatch, context: int, horizon: int) -> Tensor:
        """Observe ``context`` steps, then imagine ``horizon`` steps with the logged actions:
        predictions ``(B, horizon, *O)`` of ``obs[:, context:context + horizon]`` in
        ``preprocess_obs`` space. Needs ``context >= 1`` and ``context + horizon <= T``."""


#: What ``features(state, mode)`` returns: 'sample' = [h, z] with z the sampled stochastic state
#: (DreamerV2); 'mean' = [h, E[z]], the expectation of z under the distribution it was sampled
#: from (class probabilities of a categorical z, the mean of a Gaussian z), so the features are
#: a deterministic function of the filter's history; 'deter' = h only (the DITTO reference
#: code's reward input). Models without a stochastic part (``dynamics``) return the same
#: features for every mode.
FEATURES: tuple[str, ...] = typing.get_args(Features)


def check_features(mode: str, field: str = "features") -> str:
    """``mode`` if it is one of :data:`FEATURES`, else a one-line UserError naming ``field``."""
    if mode not in FEATURES:
        raise UserError(f"config field {field!r} is {mode!r}; choose one of {list(FEATURES)}")
    return mode


def feature_size(world_model, mode: str = "sample") -> int:
    """Width of ``world_model.features(state, mode)``."""
    if mode == "sample":
        return int(world_model.feature_dim)
    return int(world_model.features(world_model.initial(1), mode).shape[-1])


def total_loss(losses: Mapping[str, Tensor], scales: Mapping[str, float]) -> Tensor:
    """``Σ scales[k] · losses[k]``; the keys must match exactly (a term without a scale, or a
    scale without a term, is a bug, as dreamerv3 asserts)."""
    assert set(losses) == set(scales), \
        f"loss terms {sorted(losses)} do not match loss scales {sorted(scales)}"
    return sum(scales[name] * value for name, value in losses.items())  # type: ignore[return-value]


class WorldModelBase(nn.Module):
    """Shared plumbing: argument checks and the protocol methods that only need the others
    (``encode_sequence``, ``open_loop``). Models subclass this and implement the rest."""

    spec: DataSpec
    feature_dim: int

    def _check_sequence(self, obs: Tensor, prev_action: Tensor, is_first: Tensor) -> None:
        assert is_first.dim() == 2 and is_first.dtype == torch.bool, \
            f"is_first must be (B, T) bool, got {tuple(is_first.shape)} {is_first.dtype}"
        B, T = is_first.shape
        assert tuple(obs.shape) == (B, T, *self.spec.obs_shape), \
            f"obs must be (B, T, *{self.spec.obs_shape}) = {(B, T, *self.spec.obs_shape)}, " \
            f"got {tuple(obs.shape)}"
        assert tuple(prev_action.shape) == (B, T, self.spec.action_dim), \
            f"prev_action must be (B, T, A) = {(B, T, self.spec.action_dim)}, " \
            f"got {tuple(prev_action.shape)}"

    def continue_prob(self, state: State) -> Optional[Tensor]:
        """P(the episode goes on) at ``state (*batch,)`` -> ``(*batch,)`` for a model with a
        continue head; None (the default) for one without."""
        return None

    @torch.no_grad()
    def encode_sequence(self, batch: SequenceBatch) -> State:
        posterior, _ = self.observe(batch.obs, batch.prev_action, batch.is_first)  # type: ignore[attr-defined]
        return posterior

    @torch.no_grad()
    def open_loop(self, batch: SequenceBatch, context: int, horizon: int) -> Tensor:
        B, T = batch.shape
        if context < 1 or horizon < 1 or context + horizon > T:
            raise UserError(f"open_loop needs 1 <= context, 1 <= horizon and context + horizon "
                            f"<= T = {T}; got context={context}, horizon={horizon}")
        posterior, _ = self.observe(batch.obs[:, :context], batch.prev_action[:, :context],  # type: ignore[attr-defined]
                                    batch.is_first[:, :context])
        state = posterior[:, -1]
        predictions = []
        for k in range(horizon):
            # prev_action[context + k] is the logged action that led to obs[context + k].
            state = self.imagine_step(state, batch.prev_action[:, context + k])  # type: ignore[attr-defined]
            predictions.append(self.decode(self.features(state)))  # type: ignore[attr-defined]
        return torch.stack(predictions, 1)  # (B, horizon, *O)


#: Open-loop horizons every world-model evaluation reports.
HORIZONS = (1, 5, 15)


@torch.no_grad()
def open_loop_errors(model, batch: SequenceBatch, context: int, horizons=HORIZONS) -> dict[str, float]:
    """MSE of open-loop predictions at each horizon vs. the naive 'repeat the last observation'."""
    horizon = max(horizons)
    predicted = model.open_loop(batch, context, horizon)                       # (B, H, *O)
    truth = model.preprocess_obs(batch.obs[:, context:context + horizon])       # (B, H, *O)
    last = model.preprocess_obs(batch.obs[:, context - 1:context])              # (B, 1, *O)
    reduce = tuple(range(2, truth.dim()))
    model_err = ((predicted - truth) ** 2).mean(reduce).mean(0)                 # (H,)
    naive_err = ((last - truth) ** 2).mean(reduce).mean(0)
    out = {}
    for h in horizons:
        out[f"open_loop/mse_h{h}"] = float(model_err[h - 1])
        out[f"open_loop/naive_mse_h{h}"] = float(naive_err[h - 1])
        out[f"open_loop/ratio_h{h}"] = float(model_err[h - 1] / naive_err[h - 1].clamp_min(1e-12))
    return out
