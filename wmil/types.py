"""Typed batches and specs shared by every layer.

Shape letters: B batch, T time, A action dimension, F feature dimension.
Observation shapes are written ``O`` (``(D,)`` for vectors, ``(C, H, W)`` for pixels).

Time alignment (decided once, in ``wmil.data``): an episode has T actions and
T+1 observations. In a sequence window, step t holds

    obs[t]          the observation at step t
    prev_action[t]  the action that led to obs[t]   (zeros where is_first[t])
    reward[t]       the reward received on arriving at obs[t] (0 where is_first[t])
    is_first[t]     obs[t] is the first observation of an episode (a reset)
    is_terminal[t]  obs[t] is a terminal state (the MDP ended there; not a time-out)
    action[t]       the action taken at obs[t]       (zeros where not action_mask[t])
    action_mask[t]  action[t] is a real logged action (False at an episode's last obs)
    mask[t]         step t is real data (False only on padding; None when nothing is padded)

so that ``prev_action[t+1] == action[t]`` inside an episode. Algorithms never shift indices.

              obs[0]   obs[1]   ...   obs[T-1]   obs[T]
    prev_act    0       a[0]    ...   a[T-2]     a[T-1]
    action     a[0]     a[1]    ...   a[T-1]      0 (masked)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

Tensor = torch.Tensor


def _to(obj, device):
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), torch.Tensor)})


@dataclass(frozen=True)
class DataSpec:
    """What a dataset (and every model trained on it) consumes and produces."""

    obs_shape: tuple[int, ...]
    """(D,) for vector observations, (C, H, W) for pixels."""
    obs_dtype: str
    """'float32' for vectors, 'uint8' for pixels."""
    action_dim: int
    """Number of discrete actions (one-hot width) or the continuous action dimension A."""
    discrete: bool
    """True for Discrete action spaces (one-hot inside models), False for Box."""
    action_low: Optional[tuple[float, ...]] = None
    """Lower bound of a continuous action space (None for discrete)."""
    action_high: Optional[tuple[float, ...]] = None
    """Upper bound of a continuous action space (None for discrete)."""

    @property
    def pixels(self) -> bool:
        return len(self.obs_shape) == 3

    def describe(self) -> str:
        """E.g. ``obs (4,) float32, actions Discrete(2)`` (for error messages)."""
        kind = f"Discrete({self.action_dim})" if self.discrete else f"Box({self.action_dim})"
        return f"obs {self.obs_shape} {self.obs_dtype}, actions {kind}"

    def to_dict(self) -> dict:
        return {
            "obs_shape": list(self.obs_shape), "obs_dtype": self.obs_dtype,
            "action_dim": self.action_dim, "discrete": self.discrete,
            "action_low": None if self.action_low is None else list(self.action_low),
            "action_high": None if self.action_high is None else list(self.action_high),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(
            obs_shape=tuple(d["obs_shape"]), obs_dtype=d["obs_dtype"],
            action_dim=int(d["action_dim"]), discrete=bool(d["discrete"]),
            action_low=None if d.get("action_low") is None else tuple(d["action_low"]),
            action_high=None if d.get("action_high") is None else tuple(d["action_high"]),
        )


@dataclass(frozen=True)
class SequenceBatch:
    """Windows of length T from whole episodes (never crossing an episode end)."""

    obs: torch.Tensor          # (B, T, *O) float32 vectors or uint8 pixels
    prev_action: torch.Tensor  # (B, T, A) float32, one-hot for discrete
    action: torch.Tensor       # (B, T, A) float32, one-hot for discrete
    reward: torch.Tensor       # (B, T) float32
    is_first: torch.Tensor     # (B, T) bool
    is_terminal: torch.Tensor  # (B, T) bool
    action_mask: torch.Tensor  # (B, T) bool
    mask: Optional[torch.Tensor] = None
    # (B, T) bool: step t is real data; False only on the right padding of a window taken from
    # an episode shorter than T (sampler option ``pad=True``). None means every step is real.

    def to(self, device) -> "SequenceBatch":
        return _to(self, device)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.is_first.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class TransitionBatch:
    """Single transitions (s, a, r, s', done) sampled uniformly over all logged actions."""

    obs: torch.Tensor       # (B, *O)
    action: torch.Tensor    # (B, A) float32, one-hot for discrete
    reward: torch.Tensor    # (B,)
    next_obs: torch.Tensor  # (B, *O)
    done: torch.Tensor      # (B,) bool: next_obs is terminal (not a time-out)

    def to(self, device) -> "TransitionBatch":
        return _to(self, device)


# ------------------------------------------------------------------------------ latent states


@dataclass(frozen=True)
class State:
    """A batch of latent states with any leading shape (``(B,)``, ``(B, T)``, ``(H, B)``...).

    ``deter`` is the deterministic part (the GRU state h; the normalised observation for
    ``dynamics``), ``stoch`` the sampled stochastic part (flat one-hots for categorical latents,
    a Gaussian sample, or width 0). The distribution parameters that produced ``stoch`` are kept
    for the KL terms: ``logits`` (categorical) or ``mean``/``std`` (Gaussian); None otherwise.
    ``index`` (categorical samples drawn in imagination): the column of each categorical's 1
    in ``stoch``, so linear maps can read z as a sum of weight columns
    (:mod:`wmil.nets.onehot`); None where not recorded. :meth:`stack`, :meth:`cat` and
    :meth:`where` keep the fields every state has.
    """

    deter: Tensor                    # (*batch, D)
    stoch: Tensor                    # (*batch, S)
    logits: Optional[Tensor] = None  # (*batch, S) flat categorical logits (rssm)
    mean: Optional[Tensor] = None    # (*batch, S) Gaussian mean (gaussian_rssm)
    std: Optional[Tensor] = None     # (*batch, S) Gaussian std (gaussian_rssm)
    index: Optional[Tensor] = None   # (*batch, G) int64: the columns of stoch's ones (rssm, imagined)

    def tensors(self) -> dict[str, Tensor]:
        """The fields that hold a tensor, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def map(self, fn: Callable[[Tensor], Tensor]) -> "State":
        """Apply ``fn`` to every tensor field (e.g. ``state.map(lambda x: x[:, -1])``)."""
        return State(**{name: fn(value) for name, value in self.tensors().items()})

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading shape shared by all fields, e.g. ``(B, T)``."""
        return tuple(self.deter.shape[:-1])

    def __getitem__(self, index) -> "State":
        """Index the leading (batch/time) dimensions: ``state[:, t]``, ``state[mask]``."""
        # The feature axis is last, so any index of the leading axes leaves it untouched.
        return self.map(lambda x: x[index])

    def detach(self) -> "State":
        return self.map(lambda x: x.detach())

    def to(self, device) -> "State":
        return self.map(lambda x: x.to(device))

    def reshape(self, *batch_shape: int) -> "State":
        """Give the leading dimensions a new shape, e.g. ``(B, T) -> (B * T,)`` with ``-1``."""
        return self.map(lambda x: x.reshape(*batch_shape, x.shape[-1]))

    def flatten(self) -> "State":
        """Merge all leading dimensions into one: ``(B, T, .) -> (B*T, .)``."""
        return self.reshape(-1)

    def where(self, mask: Tensor, other: "State") -> "State":
        """Per element of the batch shape: this state where ``mask`` is True, else ``other``."""
        return State(**{name: torch.where(mask.unsqueeze(-1), getattr(self, name), getattr(other, name))
                        for name in _common_fields([self, other])})

    @staticmethod
    def stack(states: Iterable["State"], dim: int = 0) -> "State":
        """Stack states of equal batch shape along a new leading dimension ``dim``
        (``dim`` counts batch dimensions only; it must not be negative)."""
        states = list(states)
        assert states, "State.stack needs at least one state"
        assert dim >= 0, "State.stack: give a non-negative dim (feature axes come last)"
        return State(**{name: torch.stack([getattr(s, name) for s in states], dim)
                        for name in _common_fields(states)})

    @staticmethod
    def cat(states: Iterable["State"], dim: int = 0) -> "State":
        """Concatenate states along an existing leading dimension ``dim`` (non-negative)."""
        states = list(states)
        assert states, "State.cat needs at least one state"
        assert dim >= 0, "State.cat: give a non-negative dim (feature axes come last)"
        return State(**{name: torch.cat([getattr(s, name) for s in states], dim)
                        for name in _common_fields(states)})

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={tuple(value.shape)}" for name, value in self.tensors().items())
        return f"State({parts})"


def _common_fields(states: list[State]) -> list[str]:
    """The tensor fields that every one of ``states`` holds (an optional field such as
    ``index`` is dropped where one state lacks it)."""
    return [name for name in states[0].tensors() if all(getattr(s, name) is not None for s in states[1:])]


class Imagined:
    """An H-step rollout of a policy in a world model's prior from start states (the output of
    :func:`wmil.imagination.imagine`).

    ``states`` (all fields, ``(H+1, B)``) is stacked from the per-step states on first use and
    ``deter`` alone when only it is read: a learner that compares h (DITTO's and D-GAIL's
    default) never copies the wide stochastic parts and their logits a second time."""

    def __init__(self, steps: Sequence[State], features: Tensor, actions: Tensor, log_prob: Tensor,
                 entropy: Tensor, onehot: Optional[Any] = None):
        self._steps = list(steps)
        self._states: Optional[State] = None
        self._deter: Optional[Tensor] = None
        self.features = features    # (H+1, B, F); differentiable w.r.t. actions for continuous actors
        self.actions = actions      # (H, B, A): action k is taken at state k
        self.log_prob = log_prob    # (H, B)
        self.entropy = entropy      # (H, B)
        #: Where ``features`` end in one-hot samples: a ``wmil.nets.onehot.OneHot`` of their columns
        #: ``(H+1, B, G)`` (typed Any: types sits below nets).
        self.onehot = onehot

    @property
    def states(self) -> State:  # (H+1, B)
        if self._states is None:
            self._states = State.stack(self._steps)
        return self._states

    @property
    def deter(self) -> Tensor:  # (H+1, B, D)
        if self._states is not None:
            return self._states.deter
        if self._deter is None:
            self._deter = torch.stack([step.deter for step in self._steps])
        return self._deter
