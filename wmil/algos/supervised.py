"""Supervised behaviour cloning as a component: the network, its losses, the trainer with
held-out model selection. Used by the BC baseline (:mod:`wmil.algos.bc`) and by VINS, whose
self-correcting policy searches around a BC action (:mod:`wmil.algos.vins`).

A policy π(a | x) — the shared :class:`wmil.nets.ActionHead`: categorical, or a tanh-squashed
Gaussian scaled to the action bounds — is fitted to (input, action) pairs of the expert:

    discrete:    L = −log π(a_E | x)                  (cross-entropy)
    continuous:  L = −log π(a_E | x)                  ('gaussian': the squashed Gaussian's likelihood)
                 or L = ‖a_E − mode π(· | x)‖² / A   ('mse', the VINS paper's BC)

where mode π(· | x) = centre + half_range · tanh(μ(x)) is the action the deployed policy takes.
The input x is a vector observation (standardised by the demo mean and std), a pixel
observation (:class:`wmil.nets.ConvEncoder` first) or world-model features. A fraction of the
demo *episodes* is held out: every evaluation scores the network on them and the parameters
with the best score are kept (model selection; ``patience`` also stops the updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmil.algos.base import Selection
from wmil.config import LearnerConfig, NonNegFloat, NonNegInt, PosInt, Prob
from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.nets import ActionHead, Standardizer, adam, apply_gradients, preprocess_pixels
from wmil.nets.grid import image_encoder, is_grid
from wmil.policy import DeployedPolicy
from wmil.types import DataSpec

Tensor = torch.Tensor

@dataclass(frozen=True)
class BCConfig(LearnerConfig):
    """Behaviour cloning: π(a | o) by maximum likelihood on the demos (see the module docstring)."""

    cnn_depth: PosInt = 32
    """Channel multiplier of the image encoder (the world models' own architecture; 16 matches their 'small' preset)."""
    weight_decay: NonNegFloat = 0.0
    """Adam (L2) weight decay."""
    continuous_loss: Literal["gaussian", "mse"] = "gaussian"
    """Continuous actions: 'gaussian' (the squashed Gaussian's negative log-likelihood, learned std) or 'mse' (of the mode action)."""
    validation_fraction: Prob = 0.2
    """Fraction of demo episodes held out for model selection (at least one when there are two)."""
    split_seed: NonNegInt = 0
    """Seed of the held-out episode split."""
    patience: NonNegInt = 0
    """Stop updating after this many evaluations without a better validation score (0: never)."""
    selection: Literal["auto", "loss", "action"] = "auto"
    """Held-out score that picks the kept parameters: 'loss' (the BC loss), 'action' (MSE of the deployed mean action, continuous only) or 'auto' ('action' for continuous, 'loss' for discrete)."""

    DEFAULTS: ClassVar = dict(layers=3, units=256, act="relu", actor_lr=1e-3)  # the VINS paper's BC: 3 × 256 ReLU
    PRESETS: ClassVar = {
        "tiny": dict(layers=1, units=32, batch_size=32, cnn_depth=4),
        "small": dict(),
        "paper": dict(layers=3, units=256, continuous_loss="mse"),
    }


# ------------------------------------------------------------------------------ data


@dataclass
class Demos:
    """Expert (input, action) pairs, one per logged action, episodes laid end to end."""

    inputs: Tensor   # (N, *O) observations (or (N, F) features)
    action: Tensor   # (N, A) one-hot for discrete

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def to(self, device) -> "Demos":
        return Demos(self.inputs.to(device), self.action.to(device))

    @staticmethod
    def empty(spec: DataSpec) -> "Demos":
        dtype = torch.uint8 if spec.pixels else torch.float32
        return Demos(torch.zeros(0, *spec.obs_shape, dtype=dtype), torch.zeros(0, spec.action_dim))


def demo_pairs(dataset: Dataset) -> Demos:
    """Every (obs[t], action[t]) of ``dataset`` (rows where ``action_mask``)."""
    arrays = dataset.aligned
    rows = np.flatnonzero(arrays.action_mask)
    if arrays.obs is not None:
        obs = arrays.obs[rows]
    else:  # observations read from disk (above the memory budget): the demos are few, read them whole
        obs = np.concatenate([dataset.episode(i).observations[:-1] for i in range(len(dataset))])
    return Demos(torch.from_numpy(np.ascontiguousarray(obs)), torch.from_numpy(arrays.action[rows]))


def patience_refusal(config: BCConfig) -> Optional[str]:
    """Early stopping decides on rank 0's held-out evaluation alone (the other processes never
    evaluate), so under torchrun they would stop at different steps."""
    if config.patience > 0:
        return (f"patience={config.patience} stops on rank 0's evaluations alone; use -o patience=0 (model "
                "selection still keeps the best parameters) or run in one process")
    return None


def split_demos(expert: Dataset, config: BCConfig) -> tuple[Dataset, Dataset]:
    """(training, held-out) episodes; no held-out ones when there is a single episode."""
    if len(expert) < 2 or config.validation_fraction <= 0:
        return expert, expert.select([])
    return expert.split(config.validation_fraction, seed=config.split_seed)


# ------------------------------------------------------------------------------ networks


def bc_loss(head: ActionHead, x: Tensor, target: Tensor, kind: str = "gaussian") -> Tensor:
    """Per-sample BC loss ``(B,)`` of ``head`` on inputs ``x (B, F)`` against expert actions
    ``target (B, A)``: −log π(a_E | x) (discrete, or continuous with ``kind='gaussian'``), or
    the mean squared error of the mode action (``kind='mse'``)."""
    if head.discrete or kind == "gaussian":
        return -head.log_prob(x, target)
    mode, _, _ = head(x, deterministic=True)
    return (mode - target).pow(2).mean(-1)


class BCNet(nn.Module):
    """π(a | input): input standardisation (vectors) or an image encoder (pixels), then the head.

    ``in_shape`` is ``(D,)`` for vector observations or world-model features, ``(C, H, W)``
    uint8 for images. The image encoder is the world models' own for that shape
    (:func:`wmil.nets.grid.image_encoder`: the grid nets for small grids such as MinAtar's, the
    64×64 :class:`ConvEncoder` otherwise, other sizes resized to 64×64), so with ``cnn_depth``,
    ``layers`` and ``units`` set to the world model's and the latent actor's sizes BC is the
    DITTO paper's baseline: the world-model encoder plus the agent's policy, trained end to end.
    """

    def __init__(self, in_shape: tuple[int, ...], spec: DataSpec, config: BCConfig):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.pixels = len(self.in_shape) == 3
        self.grid = self.pixels and is_grid(self.in_shape)
        if self.pixels:
            shape = self.in_shape if self.grid else (self.in_shape[0], 64, 64)
            self.encoder: Optional[nn.Module] = image_encoder(shape, config.cnn_depth, "elu")
            width = self.encoder.out_dim
        else:
            self.encoder = None
            width = self.in_shape[0]
        self.standardize = Standardizer(width if not self.pixels else 0)
        self.head = ActionHead(width, spec, config)
        self.kind = "categorical" if spec.discrete else config.continuous_loss

    def set_normalizer(self, inputs: Tensor) -> None:
        """Standardise vector inputs by the mean and std of ``inputs (N, D)`` (no-op for pixels)."""
        if not self.pixels:
            self.standardize.fit(inputs)

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, *in_shape)`` → ``(B, width)``."""
        if self.pixels:
            x = preprocess_pixels(inputs)
            if not self.grid and tuple(x.shape[-2:]) != (64, 64):
                x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
            return self.encoder(x)  # type: ignore[misc]
        return self.standardize(inputs.float())

    def loss(self, inputs: Tensor, action: Tensor) -> Tensor:
        """Per-sample BC loss ``(B,)`` (see :func:`bc_loss`)."""
        return bc_loss(self.head, self.embed(inputs), action, self.kind)

    @property
    def stochastic(self) -> bool:
        """Whether the network has a learned action distribution to sample. The 'mse' loss trains
        only the mode: the head's std is never trained, so a 'sample' would add noise of an
        arbitrary scale (FetchPush, 100 demos, 3 seeds: 16 % success sampled against 65 % for
        the mode). Such a network acts with its mode whatever it is asked."""
        return self.kind != "mse"

    def act(self, inputs: Tensor, deterministic: bool = True) -> Tensor:
        """Actions ``(B, A)``: the mode (``deterministic``, or always for an 'mse' network: see
        :attr:`stochastic`) or a sample of π(· | input)."""
        action, _, _ = self.head(self.embed(inputs), deterministic or not self.stochastic)
        return action


@torch.no_grad()
def agreement(net: BCNet, demos: Demos, discrete: bool, chunk: int = 1024) -> dict[str, float]:
    """Expert action accuracy (discrete) or MSE of the mean action (continuous), and the mean
    BC loss, of ``net`` on ``demos``."""
    hits, squared, loss, n = 0.0, 0.0, 0.0, len(demos)
    for start in range(0, n, chunk):
        inputs, target = demos.inputs[start:start + chunk], demos.action[start:start + chunk]
        action = net.act(inputs, deterministic=True)
        loss += float(net.loss(inputs, target).sum())
        if discrete:
            hits += float((action.argmax(-1) == target.argmax(-1)).sum())
        else:
            squared += float((action - target).pow(2).mean(-1).sum())
    out = {"loss": loss / max(n, 1)}
    out["action_accuracy" if discrete else "action_mse"] = (hits if discrete else squared) / max(n, 1)
    return out


def selection_key(config: BCConfig, spec: DataSpec) -> str:
    """Which held-out statistic of :func:`agreement` selects the kept parameters.

    For continuous actions the default is the MSE of the mean action, the action the deployed
    policy takes: with near-deterministic (scripted) experts a Gaussian head's std collapses,
    and its held-out likelihood then rises after a few hundred updates while the mean action
    keeps improving (FetchPush, 100 demos: likelihood selection kept step 500 of 5,000 and
    BC scored 7 % success, with the Gaussian head BC had before the shared squashed one)."""
    if config.selection == "action" and spec.discrete:
        raise config.invalid("selection", "needs continuous actions; use 'loss' for discrete ones")
    if config.selection == "loss" or (config.selection == "auto" and spec.discrete):
        return "loss"
    return "action_mse"


class BCTrainer:
    """A BC network, its optimiser, the held-out demos and the selection of the best parameters
    (a learner component: see :meth:`wmil.algos.base.Learner.add_component`).

    ``train``/``val`` are the demo pairs of the training and held-out episodes (``val`` may be
    empty: then the newest parameters count as the best). The network is registered as
    ``name``.
    """

    def __init__(self, net: BCNet, train: Demos, val: Demos, config: BCConfig, spec: DataSpec,
                 device: torch.device, name: str = "policy"):
        if len(train) == 0:
            raise UserError("behaviour cloning: the expert data holds no actions to clone")
        self.config, self.spec, self.name = config, spec, name
        self.train, self.val = train.to(device), val.to(device)
        self.net = net.to(device)
        self.net.set_normalizer(self.train.inputs)
        self.opt = adam(self.net.parameters(), lr=config.actor_lr, weight_decay=config.weight_decay)
        self.selection_key = selection_key(config, spec)
        self.selection = Selection({name: self.net}, patience=config.patience)

    def networks(self) -> dict[str, nn.Module]:
        return {self.name: self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.name: self.opt}

    def selections(self) -> dict[str, Selection]:
        return {self.name: self.selection}

    @property
    def stopped(self) -> bool:
        return self.selection.stopped

    def update(self, rng: np.random.Generator, shard: Optional[Callable[[np.ndarray], np.ndarray]] = None
               ) -> dict[str, float]:
        """One Adam step on a minibatch of ``batch_size`` rows (skipped once early-stopped).
        ``shard``: this process's block of the global draw (the learner's
        :meth:`~wmil.algos.base.Learner.shard` in a data-parallel run; the step then averages the
        gradients over the processes, :func:`wmil.nets.apply_gradients`)."""
        rows = rng.integers(len(self.train), size=self.config.batch_size)
        rows = torch.as_tensor(rows if shard is None else shard(rows), device=self.train.action.device)
        if self.stopped:
            with torch.no_grad():
                loss = self.net.loss(self.train.inputs[rows], self.train.action[rows]).mean()
            return {"loss/bc": float(loss), "bc/stopped": 1.0}
        loss = self.net.loss(self.train.inputs[rows], self.train.action[rows]).mean()
        apply_gradients(self.opt, loss)
        return {"loss/bc": float(loss.detach()), "bc/stopped": 0.0}

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss and action agreement; keeps the parameters with the best score."""
        discrete = self.spec.discrete
        held_out = len(self.val) > 0
        stats = agreement(self.net, self.val if held_out else self.train, discrete)
        self.selection.offer(stats[self.selection_key], step, force=not held_out)
        key = "action_accuracy" if discrete else "action_mse"
        return {"eval/val_loss": stats["loss"], f"eval/{key}": stats[key],
                "eval/best_val_score": self.selection.best_score, "eval/best_step": float(self.selection.best_step),
                "eval/held_out_pairs": float(len(self.val))}

    def best_net(self) -> BCNet:
        """A copy of the network with the selected (best held-out) parameters, in eval mode."""
        import copy

        net = copy.deepcopy(self.net)
        if self.selection.snapshot is not None:
            net.load_state_dict(self.selection.snapshot[self.name])
        return net.eval()


# ------------------------------------------------------------------------------ deployment


class ObservationPolicy(DeployedPolicy):
    """A BC network acting directly on environment observations (no world model)."""

    def __init__(self, net: BCNet, spec: DataSpec):
        super().__init__(spec)
        self.net = net

    @property
    def stochastic(self) -> bool:
        return self.net.stochastic

    def decide(self, obs: Tensor, first: Tensor, deterministic: bool) -> Tensor:
        return self.net.act(obs, deterministic)


__all__ = ["BCConfig", "BCNet", "BCTrainer", "Demos", "ObservationPolicy", "agreement", "bc_loss",
           "demo_pairs", "patience_refusal", "selection_key", "split_demos"]
