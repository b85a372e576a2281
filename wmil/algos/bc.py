"""Behaviour cloning (Pomerleau 1989; Bain & Sammut 1999), the supervised baseline.

The real algorithm of its paper, adapted to the offline setting: a policy π(a | o) is fitted
to the expert's (observation, action) pairs by maximum likelihood, with no environment and no
world model:

    discrete:    L = −log softmax(f(o))[a_E]                      (cross-entropy)
    continuous:  L = Σ_d ½((a_E,d − μ_d(o)) / σ_d(o))² + log σ_d(o) (Gaussian likelihood)
                 or L = ‖a_E − μ(o)‖² / A                          (MSE, the VINS paper's BC)

The network is an MLP on vector observations (normalised by the demo mean and std; VINS
paper: 3 hidden layers of 256 ReLU units) or :class:`wmil.nets.ConvEncoder` + an MLP head on
pixels. A fraction of the demo *episodes* is held out: the validation loss is measured every
evaluation and the parameters with the lowest one are kept (early stopping by model
selection; ``patience`` also stops the updates). The deployed :class:`ObservationPolicy`
acts on raw environment observations with the mean (or most likely) action.

The pieces here (:class:`BCNet`, :class:`BCTrainer`, :class:`ObservationPolicy`) are shared
with VINS, whose self-correcting policy searches around a BC action.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.nets import MLP, ConvEncoder, preprocess_pixels
from wmil.policy import DeployedPolicy, expert_view
from wmil.types import DataSpec

Tensor = torch.Tensor

#: Bounds of the Gaussian head's log std, in units of the action half-range.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 1.0


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning: π(a | o) by maximum likelihood on the demos (see the module docstring)."""

    layers: int = 3
    """Hidden layers of the MLP head (VINS paper's BC: 3)."""
    units: int = 256
    """Units per hidden layer (VINS paper's BC: 256)."""
    act: str = "relu"
    """Activation of the hidden layers."""
    cnn_depth: int = 32
    """Channel multiplier of the conv encoder for pixel observations."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam (L2) weight decay."""
    batch_size: int = 256
    """(observation, action) pairs per update."""
    continuous_loss: str = "gaussian"
    """'gaussian' (negative log-likelihood with a learned std) or 'mse' for continuous actions."""
    validation_fraction: float = 0.2
    """Fraction of demo episodes held out for model selection (at least one when there are two)."""
    split_seed: int = 0
    """Seed of the held-out episode split."""
    patience: int = 0
    """Stop updating after this many evaluations without a better validation score (0: never)."""
    selection: str = "auto"
    """Held-out score that picks the kept parameters: 'loss' (the BC loss), 'action' (MSE of the deployed mean action, continuous only) or 'auto' ('action' for continuous, 'loss' for discrete)."""


PRESETS = {
    "tiny": dict(layers=1, units=32, batch_size=32, cnn_depth=4),
    "small": dict(),
    "paper": dict(layers=3, units=256, continuous_loss="mse"),
}

CONTINUOUS_LOSSES = ("gaussian", "mse")
SELECTIONS = ("auto", "loss", "action")


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


def demo_pairs(dataset: Dataset) -> Demos:
    """Every (obs[t], action[t]) of ``dataset`` (rows where ``action_mask``)."""
    arrays = dataset.aligned
    rows = np.flatnonzero(arrays.action_mask)
    if arrays.obs is not None:
        obs = arrays.obs[rows]
    else:  # pixels read out of core: the demos are few, read them whole
        obs = np.concatenate([dataset.episode(i).observations[:-1] for i in range(len(dataset))])
    return Demos(torch.from_numpy(np.ascontiguousarray(obs)), torch.from_numpy(arrays.action[rows]))


# ------------------------------------------------------------------------------ networks


def bc_loss(output: Tensor, target: Tensor, discrete: bool, kind: str = "gaussian") -> Tensor:
    """Per-sample BC loss ``(B,)`` of head ``output`` against expert actions ``target (B, A)``.

    Discrete: ``output`` are logits ``(B, A)``, ``target`` one-hot: cross-entropy. Continuous:
    ``output`` is ``(B, 2A)`` = [mean, std] ('gaussian': ``Σ_d ½((a−μ)/σ)² + log σ``, without the
    constant ½·log 2π) or ``(B, A)`` means ('mse': ``mean_d (a − μ)²``).
    """
    if discrete:
        return F.cross_entropy(output, target.argmax(-1), reduction="none")
    if kind == "mse":
        return (output[..., :target.shape[-1]] - target).pow(2).mean(-1)
    mean, std = output.chunk(2, -1)
    return (0.5 * ((target - mean) / std).pow(2) + std.log()).sum(-1)


class ActionHead(nn.Module):
    """MLP from an input vector to an action distribution.

    Discrete: logits. Continuous: mean ``center + half_range · tanh(·)`` inside the action
    bounds (unbounded spaces: the raw output) and, for the Gaussian loss, a std of
    ``half_range · exp(clamp(·, LOG_STD_MIN, LOG_STD_MAX))``.
    """

    def __init__(self, in_dim: int, spec: DataSpec, config: BCConfig):
        super().__init__()
        if config.continuous_loss not in CONTINUOUS_LOSSES:
            raise UserError(f"config field 'continuous_loss' is {config.continuous_loss!r}; choose one of "
                            f"{list(CONTINUOUS_LOSSES)}")
        self.discrete = spec.discrete
        self.action_dim = spec.action_dim
        self.kind = "categorical" if spec.discrete else config.continuous_loss
        out = spec.action_dim * (2 if self.kind == "gaussian" else 1)
        self.net = MLP(in_dim, out, config.layers, config.units, config.act)
        center, half, bounded = torch.zeros(spec.action_dim), torch.ones(spec.action_dim), False
        if not spec.discrete:
            low = torch.tensor(spec.action_low, dtype=torch.float32)
            high = torch.tensor(spec.action_high, dtype=torch.float32)
            bounded = bool(torch.isfinite(low).all() and torch.isfinite(high).all())
            if bounded:
                center, half = (high + low) / 2, (high - low) / 2
        self.bounded = bounded
        self.register_buffer("center", center)
        self.register_buffer("half_range", half)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim)`` → logits ``(..., A)``, means ``(..., A)`` or [mean, std] ``(..., 2A)``."""
        out = self.net(x)
        if self.discrete:
            return out
        raw_mean = out[..., :self.action_dim]
        mean = self.center + self.half_range * torch.tanh(raw_mean) if self.bounded else raw_mean
        if self.kind == "mse":
            return mean
        log_std = out[..., self.action_dim:].clamp(LOG_STD_MIN, LOG_STD_MAX)
        return torch.cat([mean, self.half_range * log_std.exp()], -1)

    def act(self, output: Tensor, deterministic: bool = True) -> Tensor:
        """An action ``(..., A)`` (one-hot for discrete) from the head's ``output``."""
        if self.discrete:
            index = output.argmax(-1) if deterministic else torch.distributions.Categorical(logits=output).sample()
            return F.one_hot(index, self.action_dim).to(output.dtype)
        mean = output[..., :self.action_dim]
        if deterministic or self.kind == "mse":
            return mean
        std = output[..., self.action_dim:]
        sample = mean + std * torch.randn_like(mean)
        if self.bounded:
            sample = torch.maximum(torch.minimum(sample, self.center + self.half_range), self.center - self.half_range)
        return sample


class BCNet(nn.Module):
    """π(a | input): input normalisation (vectors) or a conv encoder (pixels), then the head.

    ``in_shape`` is ``(D,)`` for vector observations or world-model features, ``(C, H, W)``
    uint8 for pixels (resized to 64×64 when another size, for :class:`ConvEncoder`).
    """

    def __init__(self, in_shape: tuple[int, ...], spec: DataSpec, config: BCConfig):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.pixels = len(self.in_shape) == 3
        if self.pixels:
            self.encoder: Optional[ConvEncoder] = ConvEncoder(self.in_shape[0], config.cnn_depth, "elu")
            width = self.encoder.out_dim
        else:
            self.encoder = None
            width = self.in_shape[0]
        self.register_buffer("in_mean", torch.zeros(width if not self.pixels else 0))
        self.register_buffer("in_std", torch.ones(width if not self.pixels else 0))
        self.head = ActionHead(width, spec, config)

    def set_normalizer(self, inputs: Tensor) -> None:
        """Normalise vector inputs by the mean and std of ``inputs (N, D)`` (no-op for pixels)."""
        if not self.pixels:
            self.in_mean.copy_(inputs.float().mean(0))
            self.in_std.copy_(inputs.float().std(0, unbiased=False).clamp(min=1e-3))

    def embed(self, inputs: Tensor) -> Tensor:
        """``(B, *in_shape)`` → ``(B, width)``."""
        if self.pixels:
            x = preprocess_pixels(inputs)
            if tuple(x.shape[-2:]) != (64, 64):
                x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
            return self.encoder(x)  # type: ignore[misc]
        return (inputs.float() - self.in_mean) / self.in_std

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.embed(inputs))

    def loss(self, inputs: Tensor, action: Tensor) -> Tensor:
        """Mean BC loss of a batch."""
        return bc_loss(self(inputs), action, self.head.discrete, self.head.kind).mean()

    def act(self, inputs: Tensor, deterministic: bool = True) -> Tensor:
        return self.head.act(self(inputs), deterministic)


@torch.no_grad()
def agreement(net: BCNet, demos: Demos, discrete: bool, chunk: int = 1024) -> dict[str, float]:
    """Expert action accuracy (discrete) or MSE of the mean action (continuous), and the mean
    BC loss, of ``net`` on ``demos``."""
    hits, squared, loss, n = 0.0, 0.0, 0.0, len(demos)
    for start in range(0, n, chunk):
        inputs, target = demos.inputs[start:start + chunk], demos.action[start:start + chunk]
        output = net(inputs)
        action = net.head.act(output, deterministic=True)
        loss += float(bc_loss(output, target, discrete, net.head.kind).sum())
        if discrete:
            hits += float((action.argmax(-1) == target.argmax(-1)).sum())
        else:
            squared += float((action - target).pow(2).mean(-1).sum())
    out = {"loss": loss / max(n, 1)}
    out["action_accuracy" if discrete else "action_mse"] = (hits if discrete else squared) / max(n, 1)
    return out


class BCTrainer:
    """A BC network, its optimiser, the held-out demos and the best parameters so far.

    ``train``/``val`` are the demo pairs of the training and held-out episodes (``val`` may
    be empty: then the newest parameters count as the best).
    """

    def __init__(self, net: BCNet, train: Demos, val: Demos, config: BCConfig, spec: DataSpec,
                 device: torch.device):
        if len(train) == 0:
            raise UserError("behaviour cloning: the expert data holds no actions to clone")
        self.config, self.spec = config, spec
        self.train, self.val = train.to(device), val.to(device)
        self.net = net.to(device)
        self.net.set_normalizer(self.train.inputs)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.selection_key = selection_key(config, spec)
        self.best: Optional[dict] = None
        self.best_loss = math.inf      # the best held-out score (``selection_key``; lower is better)
        self.best_step = 0
        self.stale = 0
        self.updates = 0

    @property
    def stopped(self) -> bool:
        return self.config.patience > 0 and self.stale >= self.config.patience

    def update(self, rng: np.random.Generator) -> dict[str, float]:
        """One Adam step on a minibatch (skipped once early-stopped)."""
        rows = torch.as_tensor(rng.integers(len(self.train), size=self.config.batch_size), device=self.train.action.device)
        if self.stopped:
            with torch.no_grad():
                loss = self.net.loss(self.train.inputs[rows], self.train.action[rows])
            return {"loss/bc": float(loss), "bc/stopped": 1.0}
        loss = self.net.loss(self.train.inputs[rows], self.train.action[rows])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        return {"loss/bc": float(loss.detach()), "bc/stopped": 0.0}

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss and action agreement; keeps the parameters with the lowest loss."""
        discrete = self.spec.discrete
        held_out = len(self.val) > 0
        stats = agreement(self.net, self.val if held_out else self.train, discrete)
        score = stats[self.selection_key]
        if not held_out or score < self.best_loss:
            self.best = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.best_loss, self.best_step, self.stale = score, step, 0
        else:
            self.stale += 1
        key = "action_accuracy" if discrete else "action_mse"
        return {"eval/val_loss": stats["loss"], f"eval/{key}": stats[key], "eval/best_val_score": self.best_loss,
                "eval/best_step": float(self.best_step), "eval/held_out_pairs": float(len(self.val))}

    def best_net(self) -> BCNet:
        """A copy of the network with the selected (best validation) parameters, in eval mode."""
        net = copy.deepcopy(self.net)
        if self.best is not None:
            net.load_state_dict(self.best)
        return net.eval()

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "best": self.best,
                "best_loss": self.best_loss, "best_step": self.best_step, "stale": self.stale,
                "updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.best, self.best_loss = state["best"], float(state["best_loss"])
        self.best_step, self.stale, self.updates = int(state["best_step"]), int(state["stale"]), int(state["updates"])

    @staticmethod
    def deployed_params(state: dict) -> dict:
        """The parameters a deployed policy uses: the best ones, else the newest."""
        return state["best"] if state.get("best") is not None else state["net"]


def selection_key(config: BCConfig, spec: DataSpec) -> str:
    """Which held-out statistic of :func:`agreement` selects the kept parameters.

    For continuous actions the default is the MSE of the mean action, the action the deployed
    policy takes: with near-deterministic (scripted) experts a Gaussian head's std collapses,
    and its held-out likelihood then rises after a few hundred updates while the mean action
    keeps improving (FetchPush, 100 demos: likelihood selection kept step 500 of 5,000 and
    BC scored 7 % success)."""
    if config.selection not in SELECTIONS:
        raise UserError(f"config field 'selection' is {config.selection!r}; choose one of {list(SELECTIONS)}")
    if config.selection == "action" and spec.discrete:
        raise UserError("config field 'selection' = 'action' needs continuous actions; use 'loss' for discrete ones")
    if config.selection == "loss" or (config.selection == "auto" and spec.discrete):
        return "loss"
    return "action_mse"


def split_demos(expert: Dataset, config: BCConfig) -> tuple[Dataset, Dataset]:
    """(training, held-out) episodes; no held-out ones when there is a single episode."""
    if len(expert) < 2 or config.validation_fraction <= 0:
        return expert, expert.select([])
    return expert.split(config.validation_fraction, seed=config.split_seed)


# ------------------------------------------------------------------------------ deployment


class ObservationPolicy(DeployedPolicy):
    """A BC network acting directly on environment observations (no world model)."""

    def __init__(self, net: BCNet, spec: DataSpec):
        super().__init__(spec)
        self.net = net

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True):
        return self._to_env(self.net.act(self._obs(obs), deterministic))

    @torch.no_grad()
    def offline_metrics(self) -> dict:
        """Expert action accuracy / MSE on the run's expert episodes (training and held-out)."""
        demos = demo_pairs(expert_view(self.run_config)).to(self.device)
        stats = agreement(self.net, demos, self.spec.discrete)
        key = "action_accuracy" if self.spec.discrete else "action_mse"
        return {f"eval/{key}": stats[key]}


# ------------------------------------------------------------------------------ algorithm


class BC:
    """Behaviour cloning on observations; trains without a world model."""

    name = "bc"
    config_cls = BCConfig
    presets = PRESETS
    progress_keys = ("loss/bc", "eval/val_loss")
    needs_world_model = False

    def __init__(self, world_model, expert: Dataset, config: BCConfig, device: torch.device):
        self.spec: DataSpec = expert.spec
        self.config = config
        train, val = split_demos(expert, config)
        net = BCNet(self.spec.obs_shape, self.spec, config)
        self.bc = BCTrainer(net, demo_pairs(train), demo_pairs(val) if len(val) else _empty(self.spec),
                            config, self.spec, device)
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        self.step = 0

    def update(self, step: int) -> dict:
        self.step = step
        return self.bc.update(self.rng)

    def evaluate(self) -> dict:
        return self.bc.evaluate(self.step)

    def training_state(self) -> dict:
        return {"bc": self.bc.state(), "rng": self.rng.bit_generator.state, "step": self.step}

    def load_training_state(self, state: dict) -> None:
        self.bc.load_state(state["bc"])
        self.rng.bit_generator.state = state["rng"]
        self.step = int(state["step"])

    def policy(self) -> ObservationPolicy:
        return ObservationPolicy(self.bc.best_net(), self.spec)

    @staticmethod
    def deployable(world_model, config: BCConfig, state: dict, spec: DataSpec) -> ObservationPolicy:
        net = BCNet(spec.obs_shape, spec, config)
        net.load_state_dict(BCTrainer.deployed_params(state["bc"]))
        return ObservationPolicy(net.eval(), spec)


def _empty(spec: DataSpec) -> Demos:
    dtype = torch.uint8 if spec.pixels else torch.float32
    return Demos(torch.zeros(0, *spec.obs_shape, dtype=dtype), torch.zeros(0, spec.action_dim))
