"""``wmil train-model``: fit a world model on every given dataset (mixed quality is the point).

Episodes of each dataset are split into training and validation (by episode, seeded). Batches
mix the datasets in proportion to their number of windows. The run directory holds the
resolved config, metrics, TensorBoard events and checkpoints; re-running with the same
directory resumes exactly (model, optimiser, step and every random state are restored).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from wmil.config import override, split_overrides, to_dict
from wmil.data.dataset import Dataset, SequenceSampler, load
from wmil.errors import UserError
from wmil.precision import autocast, check_precision
from wmil.runs import RunDir, resolve_device, rng_state, seed_everything, set_rng_state
from wmil.train.loop import LoopConfig, check_finite, run_loop
from wmil.types import DataSpec, SequenceBatch
from wmil.world_models.base import total_loss
from wmil.world_models.registry import WORLD_MODELS, config_for, make_world_model


@dataclass(frozen=True)
class WorldModelTrainConfig:
    """How a world model is fitted (DESIGN.md: batch 50×50). The optimiser settings (lr,
    adam_eps, grad_clip) belong to each model's config, since they differ between models."""

    steps: int = 5000
    """Number of optimiser updates."""
    batch_size: int = 50
    """Sequences per batch (B)."""
    seq_len: int = 50
    """Steps per sequence (T); shorter episodes are right-padded and masked."""
    validation_fraction: float = 0.1
    """Fraction of each dataset's episodes held out for validation."""
    seed: int = 0
    """Seeds model initialisation, sampling and the split."""
    log_every: int = 50
    """Updates between metric records."""
    eval_every: int = 500
    """Updates between validation (loss and open-loop error) evaluations."""
    checkpoint_every: int = 1000
    """Updates between checkpoints (the last step is always saved)."""
    eval_batches: int = 4
    """Validation batches per evaluation."""
    open_loop_context: int = 10
    """Observed steps before open-loop prediction."""
    precision: str = "fp32"
    """'fp32', or 'bf16' autocast for the forward pass (KL, losses, latents and the GRU state stay float32)."""


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(steps=200, batch_size=8, seq_len=16, log_every=20, eval_every=100, checkpoint_every=100,
                 eval_batches=1, open_loop_context=5),
    "small": dict(),
    "paper": dict(steps=100_000, checkpoint_every=5000, eval_every=2500),
}

HORIZONS = (1, 5, 15)


class MixedSampler:
    """Sequence windows from several datasets, in proportion to their number of windows."""

    def __init__(self, datasets: Sequence[Dataset], batch_size: int, length: int, seed: int, pad: bool = True):
        self.samplers = [SequenceSampler(d, batch_size, length, seed=seed + 7919 * i, pad=pad)
                         for i, d in enumerate(datasets)]
        weights = np.array([s.cum_windows[-1] for s in self.samplers], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self) -> SequenceBatch:
        if len(self.samplers) == 1:
            return self.samplers[0].sample()
        counts = self.rng.multinomial(self.batch_size, self.weights)
        parts = []
        for sampler, count in zip(self.samplers, counts):
            if count:
                sampler.batch_size = int(count)
                parts.append(sampler.sample())
        fields = [f.name for f in dataclasses.fields(SequenceBatch)]
        merged = {}
        for name in fields:
            values = [getattr(p, name) for p in parts]
            if name == "mask":
                values = [v if v is not None else torch.ones_like(p.is_first) for v, p in zip(values, parts)]
            merged[name] = torch.cat(values, 0)
        return SequenceBatch(**merged)

    def state(self) -> dict:
        return {"mix": self.rng.bit_generator.state, "samplers": [s.rng.bit_generator.state for s in self.samplers]}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["mix"]
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.rng.bit_generator.state = s


def load_datasets(names: Sequence[str | Dataset]) -> list[Dataset]:
    if not names:
        raise UserError("give at least one --dataset")
    datasets = [n if isinstance(n, Dataset) else load(n) for n in names]
    first = datasets[0]
    for other in datasets[1:]:
        if other.spec != first.spec:
            raise UserError(f"dataset {other.name} does not match {first.name}: {other.spec.describe()} vs "
                            f"{first.spec.describe()}; train one model per observation/action space")
    return datasets


def _obs_stats(datasets: Sequence[Dataset]) -> tuple[torch.Tensor, torch.Tensor]:
    obs = np.concatenate([d.aligned.obs for d in datasets]).astype(np.float64)
    return torch.tensor(obs.mean(0), dtype=torch.float32), torch.tensor(obs.std(0), dtype=torch.float32)


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


def _resolve(model: str, preset: str, overrides: dict[str, str], train_overrides: dict[str, Any]):
    if model not in WORLD_MODELS:
        raise UserError(f"unknown world model {model!r}; choose one of {sorted(WORLD_MODELS)}")
    if preset not in TRAIN_PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    train = WorldModelTrainConfig(**TRAIN_PRESETS[preset])
    model_cfg = config_for(model, preset)
    routed = split_overrides(overrides, {"train": train, "model": model_cfg})
    train = override(train, {**routed["train"], **train_overrides}, "train")
    check_precision(train.precision, "train.precision")
    model_cfg = config_for(model, preset, **routed["model"])
    return train, model_cfg


def train_world_model(dataset: str | Dataset | Sequence[str | Dataset], model: str = "rssm", preset: str = "small",
                      out: Optional[str | os.PathLike] = None, steps: Optional[int] = None, seed: Optional[int] = None,
                      device: str = "auto", overrides: Optional[dict[str, str]] = None, progress: bool = True,
                      precision: Optional[str] = None):
    """Train (or resume) a world model; returns the trained model (in eval mode).

    ``dataset`` is one or more dataset names/paths/objects; ``overrides`` are ``-o`` pairs such
    as ``{"lr": "1e-4", "model.deter": "256"}``; ``precision`` 'fp32' or 'bf16' (default:
    the config's, fp32).
    """
    names = [dataset] if isinstance(dataset, (str, Dataset, os.PathLike)) else list(dataset)
    datasets = load_datasets(names)
    spec = datasets[0].spec
    train_overrides = {k: v for k, v in (("steps", steps), ("seed", seed), ("precision", precision))
                       if v is not None}
    train_cfg, model_cfg = _resolve(model, preset, overrides or {}, train_overrides)
    dev = resolve_device(device)
    run = RunDir(out or Path("runs") / f"{model}-{datasets[0].name.replace('/', '-')}", "world_model")
    config = {
        "model": model, "preset": preset, "datasets": [d.name for d in datasets],
        "dataset_paths": [str(d.data_dir.parent) for d in datasets], "spec": spec.to_dict(),
        "train": to_dict(train_cfg), "model_config": to_dict(model_cfg), "precision": train_cfg.precision,
    }
    # Runs from before the precision option were fp32.
    resume = run.start_or_resume(config, ("model", "spec", "model_config", "datasets", "precision"),
                                 defaults={"precision": "fp32"})
    seed_everything(train_cfg.seed)
    world_model = make_world_model(model, spec, model_cfg)
    split = [d.split(train_cfg.validation_fraction, seed=train_cfg.seed) for d in datasets]
    train_sets = [t for t, _ in split if len(t)]
    val_sets = [v for _, v in split if len(v)]
    if hasattr(world_model, "set_normalizer"):
        world_model.set_normalizer(*_obs_stats(train_sets))
    world_model.to(dev)
    optimizer = torch.optim.Adam(world_model.parameters(), lr=model_cfg.lr, eps=model_cfg.adam_eps)
    sampler = MixedSampler(train_sets, train_cfg.batch_size, train_cfg.seq_len, seed=train_cfg.seed)
    eval_len = train_cfg.open_loop_context + max(HORIZONS)
    val_sampler = _validation_sampler(val_sets or train_sets, train_cfg, eval_len)
    start = 0
    if resume is not None:
        world_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        sampler.set_state(resume["sampler"])
        set_rng_state(resume["rng"])
        start = int(resume["step"])
        run.truncate_metrics(start)
    scales = world_model.loss_scales

    def update(step: int) -> dict:
        world_model.train()
        batch = sampler.sample().to(dev)
        with autocast(dev, train_cfg.precision):
            losses, metrics, _ = world_model.loss(batch)
        check_finite(step, losses, run)
        loss = total_loss(losses, scales)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(world_model.parameters(), model_cfg.grad_clip)
        out = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        out.update({f"train/{k}": float(v) for k, v in metrics.items()})
        out["loss/total"] = float(loss.detach())
        out["train/grad_norm"] = float(grad_norm)
        optimizer.step()
        return out

    def evaluate(step: int) -> dict:
        return evaluate_world_model(world_model, val_sampler, train_cfg, dev)

    def checkpoint() -> dict:
        return {"model": world_model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler.state(),
                "rng": rng_state()}

    loop = LoopConfig(train_cfg.steps, train_cfg.log_every, train_cfg.eval_every, train_cfg.checkpoint_every,
                      frames_per_update=train_cfg.batch_size * train_cfg.seq_len)
    if start < train_cfg.steps:
        run_loop(run, loop, start, update, evaluate, checkpoint, progress, desc=f"train {model}",
                 postfix_keys=("loss/total", "open_loop/ratio_h15"))
    world_model.eval()
    return world_model


class _ValidationSampler:
    """Fixed validation windows (same every evaluation) so curves compare like with like."""

    def __init__(self, datasets, batch_size: int, length: int, batches: int, seed: int):
        self.batches = []
        for i in range(batches):
            try:
                self.batches.append(MixedSampler(datasets, batch_size, length, seed=seed + 104729 + i, pad=False).sample())
            except UserError:  # every held-out episode is shorter than a context+horizon window
                self.batches = []
                break
        self.padded = [MixedSampler(datasets, batch_size, min(length, 50), seed=seed + 1299709 + i, pad=True).sample()
                       for i in range(batches)]


def _validation_sampler(datasets, cfg: WorldModelTrainConfig, length: int) -> _ValidationSampler:
    return _ValidationSampler(datasets, min(cfg.batch_size, 32), length, cfg.eval_batches, cfg.seed)


@torch.no_grad()
def evaluate_world_model(world_model, val: _ValidationSampler, cfg: WorldModelTrainConfig, dev) -> dict:
    """Validation loss terms and open-loop errors (no random state of training is touched), in
    the training precision."""
    world_model.eval()
    cpu_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed + 15485863)  # the model samples latents: make evaluation repeatable
    try:
        totals: dict[str, list[float]] = {}
        for batch in val.padded:
            with autocast(dev, cfg.precision):
                losses, _, _ = world_model.loss(batch.to(dev))
            for k, v in losses.items():
                totals.setdefault(f"val/{k}", []).append(float(v))
        for batch in val.batches:
            with autocast(dev, cfg.precision):
                errors = open_loop_errors(world_model, batch.to(dev), cfg.open_loop_context)
            for k, v in errors.items():
                totals.setdefault(k, []).append(v)
        return {k: float(np.mean(v)) for k, v in totals.items()}
    finally:
        torch.set_rng_state(cpu_state)


def load_world_model(run_dir: str | os.PathLike, device: str = "cpu"):
    """Load the newest checkpoint of a ``train-model`` run for use (eval mode)."""
    run = RunDir(run_dir, "world_model")
    config = run.read_config()
    run.check_kind(config)
    spec = DataSpec.from_dict(config["spec"])
    model_cfg = config_for(config["model"], config.get("preset", "small"), **config["model_config"])
    model = make_world_model(config["model"], spec, model_cfg)
    checkpoint = run.load_checkpoint()
    if checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint yet; train the model first (wmil train-model --out {run.path})")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise UserError(f"{run.path}: checkpoint does not fit the model in config.yaml ({str(exc).splitlines()[0]})") from None
    model.to(resolve_device(device))
    model.eval()
    model.run_config = config
    return model
