"""``wmil train-model``: fit a world model on every given dataset (mixed quality is the point).

Episodes of each dataset are split into training and validation (by episode, seeded). Batches
mix the datasets in proportion to their number of windows. The run directory holds the
resolved config, metrics, TensorBoard events and checkpoints; re-running with the same
directory resumes exactly (model, optimiser, step and every random state are restored).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence

import numpy as np
import torch

from wmil.config import LoopConfig, NonNegFloat, PosInt, Prob, build_config, split_overrides, to_dict
from wmil.data.dataset import Dataset, MixedSampler, load_all
from wmil.errors import UserError
from wmil.nets.optim import adam
from wmil import distributed
from wmil.precision import autocast, warn_if_emulated
from wmil.runs import RunDir, fingerprint, from_config, resolve_device, rng_state, seed_everything, set_rng_state
from wmil.train.divergence import check_mode
from wmil.train.loop import check_finite, run_loop
from wmil.types import DataSpec
from wmil.world_models.base import HORIZONS, WorldModelBase, open_loop_errors, total_loss
from wmil.world_models.registry import config_for, make_world_model, model_class


@dataclass(frozen=True)
class WorldModelTrainConfig(LoopConfig):
    """How a world model is fitted (the DITTO code: batch 50×50). The optimiser settings (lr,
    adam_eps, grad_clip) belong to each model's config, since they differ between models."""

    batch_size: PosInt = 50
    """Sequences per batch (B)."""
    seq_len: PosInt = 50
    """Steps per sequence (T); shorter episodes are right-padded and masked."""
    validation_fraction: Prob = 0.1
    """Fraction of each dataset's episodes held out for validation."""
    eval_batches: PosInt = 4
    """Validation batches per evaluation."""
    open_loop_context: PosInt = 10
    """Observed steps before open-loop prediction."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'fp32', or 'bf16' autocast for the forward pass (KL, losses, latents and the GRU state stay float32)."""
    dataset_weights: Optional[tuple[NonNegFloat, ...]] = None
    """Share of each batch drawn from each dataset, in the order given (e.g. 0.7,0.3; normalised); None: in proportion to each dataset's number of training windows."""
    end_windows: Prob = 0.0
    """Share of each batch's windows that end where an episode terminates (0: uniform windows, DreamerV2). An option for data where every episode ends in the event that matters and the model must imagine it: in MinAtar Breakout the one terminal frame per episode (the missed ball) is ~0.5 % of the data, and a model trained on uniform windows imagined a bounce in every branch where the paddle missed (README Benchmarks)."""

    DEFAULTS: ClassVar = dict(steps=5000, log_every=50, eval_every=500, checkpoint_every=1000)
    PRESETS: ClassVar = {
        "tiny": dict(steps=200, batch_size=8, seq_len=16, log_every=20, eval_every=100, checkpoint_every=100,
                     eval_batches=1, open_loop_context=5),
        "small": dict(),
        "paper": dict(steps=100_000, checkpoint_every=5000, eval_every=2500),
    }


def _obs_stats(datasets: Sequence[Dataset]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and std of every observation of ``datasets`` (vectors), accumulated
    episode by episode in float64 where the observations are read from disk."""
    if all(d.aligned.obs is not None for d in datasets):
        obs = np.concatenate([d.aligned.obs for d in datasets]).astype(np.float64)
        return torch.tensor(obs.mean(0), dtype=torch.float32), torch.tensor(obs.std(0), dtype=torch.float32)
    count, total, squares = 0, 0.0, 0.0
    for d in datasets:
        chunks = [d.aligned.obs] if d.aligned.obs is not None else \
            (d.episode(i).observations for i in range(len(d)))
        for chunk in chunks:
            chunk = np.asarray(chunk, np.float64)
            count += len(chunk)
            total = total + chunk.sum(0)
            squares = squares + (chunk ** 2).sum(0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def _pixel_rates(datasets: Sequence[Dataset], episodes: int = 100) -> np.ndarray:
    """``(C,)``: the share of 'on' pixels (> 127) per channel over up to ``episodes`` episodes of
    each dataset, evenly spaced (recipes record their ε values in blocks)."""
    on, total = 0.0, 0
    for d in datasets:
        sample = d.spaced(episodes)
        for i in range(len(sample)):
            obs = np.asarray(sample.episode(i).observations)                # (T + 1, C, H, W) uint8
            on = on + (obs > 127).sum((0, 2, 3))
            total += obs.shape[0] * obs.shape[2] * obs.shape[3]
    return np.asarray(on, np.float64) / max(total, 1)


def _dataset_weights(weights: Optional[tuple[float, ...]], datasets: Sequence[Dataset],
                     trained: Sequence[bool]) -> Optional[list[float]]:
    """``dataset_weights`` checked against the datasets, for the ones with training episodes."""
    if weights is None:
        return None
    names = ", ".join(d.name for d in datasets)
    if len(weights) != len(datasets):
        raise UserError(f"train.dataset_weights has {len(weights)} values for {len(datasets)} datasets ({names}); "
                        "give one weight per --dataset, in the same order")
    if any(w < 0 for w in weights) or not sum(w for w, t in zip(weights, trained) if t) > 0:
        raise UserError(f"train.dataset_weights={','.join(map(str, weights))}: weights must be >= 0 with a "
                        "positive one for a dataset that has training episodes")
    return [w for w, t in zip(weights, trained) if t]


def _resolve(model: str, preset: str, overrides: dict[str, str], train_overrides: dict):
    """(trainer config, model config) of a run: ``train.x``/``model.x`` or bare field names."""
    model_cfg_cls = model_class(model).config_cls
    routed = split_overrides(overrides, {"train": WorldModelTrainConfig, "model": model_cfg_cls})
    train = build_config(WorldModelTrainConfig, preset, {**routed["train"], **train_overrides}, "train-model")
    return train, build_config(model_cfg_cls, preset, routed["model"], model)


def train_world_model(dataset: str | Dataset | Sequence[str | Dataset], model: str = "rssm", preset: str = "small",
                      out: Optional[str | os.PathLike] = None, steps: Optional[int] = None, seed: Optional[int] = None,
                      device: str = "auto", overrides: Optional[dict[str, str]] = None, progress: bool = True,
                      trust_checkpoint: bool = False, precision: Optional[str] = None,
                      callbacks: Sequence[Callable[[int, dict], Any]] = (),
                      init_from: Optional[str | os.PathLike] = None) -> WorldModelBase:
    """Train (or resume) a world model; returns the trained model (in eval mode, ``run_dir`` set).

    ``dataset`` is one or more dataset names/paths/objects; ``overrides`` are ``-o`` pairs such
    as ``{"lr": "1e-4", "model.deter": "256"}``; ``precision`` is 'fp32' or 'bf16' (default: the
    config's, fp32). ``trust_checkpoint`` resumes from a checkpoint
    that needs unpickling (older versions): only for files you trust, since it can run code.
    ``callbacks``: functions ``(step, metrics)`` called with every logged row (validation rows
    included; rank 0 only under torchrun); one that returns True stops training there, after a
    checkpoint. ``init_from``: another ``train-model`` run whose newest checkpoint gives the
    starting parameters (:func:`warm_start`; e.g. to add a head to a trained model); it is read
    only when the run starts, not when it resumes.
    """
    names = [dataset] if isinstance(dataset, (str, Dataset, os.PathLike)) else list(dataset)
    datasets = load_all(names)
    spec = datasets[0].spec
    train_overrides = {k: v for k, v in (("steps", steps), ("seed", seed), ("precision", precision))
                       if v is not None}
    train_cfg, model_cfg = _resolve(model, preset, overrides or {}, train_overrides)
    check_mode(train_cfg.on_divergence)
    _dataset_weights(train_cfg.dataset_weights, datasets, [True] * len(datasets))  # before anything is written
    for d in datasets:  # every episode, before anything is written (wmil.data.check)
        d.check(train_cfg.allow_nonfinite)
    dev = resolve_device(device)
    group = distributed.current(dev)  # under torchrun: this rank's share (wmil.distributed)
    dev = group.device                # on a GPU node: the local rank's GPU
    if group.main:
        warn_if_emulated(dev, train_cfg.precision)
    group.check_batch(train_cfg.batch_size, "train.batch_size")
    if callbacks and group.parallel:  # a callback's stop on rank 0 would leave the others waiting
        raise UserError("callbacks run in one process only; train without torchrun to use them")
    run = RunDir(out or Path("runs") / f"{model}-{datasets[0].name.replace('/', '-')}", "world_model")
    config = {
        "model": model, "preset": preset, "datasets": [d.name for d in datasets],
        "dataset_paths": [str(d.data_dir.parent) for d in datasets], "spec": spec.to_dict(),
        "train": to_dict(train_cfg), "model_config": to_dict(model_cfg), "world_size": group.size,
    }
    source = None
    if init_from is not None:
        source = load_world_model(init_from, trust=trust_checkpoint)
        config["init_from"] = {"run": str(source.run_dir), "step": source.checkpoint_step,
                               "fingerprint": source.fingerprint}
        warm_start(make_world_model(model, spec, model_cfg), source, config)  # refuse before anything is written
    # What runs written before a field existed did: fp32, a Gaussian observation likelihood.
    resume = group.open_run(run, config, trust_checkpoint,
                            defaults={"train.precision": "fp32", "model_config.obs_likelihood": "gaussian",
                                      "world_size": 1, "train.dataset_weights": None, "train.end_windows": 0.0,
                                      "model_config.continue_input": "features"})
    seed_everything(train_cfg.seed)
    world_model = make_world_model(model, spec, model_cfg)
    split = [d.split(train_cfg.validation_fraction, seed=train_cfg.seed) for d in datasets]
    train_sets = [t for t, _ in split if len(t)]
    val_sets = [v for _, v in split if len(v)]
    if hasattr(world_model, "set_normalizer") and not spec.pixels:
        # Vector observations only: images are scaled to [-0.5, 0.5] instead (and a float64 copy
        # of a pixel dataset would take 8× its size).
        world_model.set_normalizer(*_obs_stats(train_sets))
    if spec.pixels and resume is None and getattr(world_model, "likelihood", None) == "bernoulli":
        world_model.set_pixel_rates(_pixel_rates(train_sets))  # the decoder starts at the base rate
    if source is not None and resume is None:
        fresh = warm_start(world_model, source, config)
        if fresh and group.main:
            print(f"{run.path}: from {source.run_dir} (step {source.checkpoint_step}); "
                  f"new parameters: {', '.join(fresh)}", file=sys.stderr)
    world_model.to(dev)
    optimizer = adam(world_model.parameters(), lr=model_cfg.lr, eps=model_cfg.adam_eps)
    weights = _dataset_weights(train_cfg.dataset_weights, datasets, [len(t) > 0 for t, _ in split])
    sampler = MixedSampler(train_sets, train_cfg.batch_size, train_cfg.seq_len, seed=train_cfg.seed, weights=weights,
                           end_share=train_cfg.end_windows)
    eval_len = train_cfg.open_loop_context + max(HORIZONS)
    val_sampler = _validation_sampler(val_sets or train_sets, train_cfg, eval_len)
    start = 0
    if resume is not None:
        world_model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        sampler.set_state(resume["sampler"])
        set_rng_state(resume["rng"])
        start = int(resume["step"])
        if group.main:
            run.truncate_metrics(start)
    group.reseed(train_cfg.seed, start)
    scales = world_model.loss_scales

    def update(step: int) -> dict:
        world_model.train()
        batch = group.shard(sampler.sample()).to(dev)
        with autocast(dev, train_cfg.precision):
            losses, metrics, _ = world_model.loss(batch)
        check_finite(step, losses, run)
        loss = total_loss(losses, scales)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        group.average_gradients(world_model.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(world_model.parameters(), model_cfg.grad_clip)
        out = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        out.update({f"train/{k}": float(v) for k, v in metrics.items()})
        out["loss/total"] = float(loss.detach())
        out = group.average_scalars(out)
        out["train/grad_norm"] = float(grad_norm)
        optimizer.step()
        return out

    def evaluate(step: int) -> dict:
        return _validate(world_model, val_sampler, train_cfg, dev)

    def checkpoint() -> dict:
        return {"model": world_model.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler.state(),
                "rng": rng_state()}

    if start < train_cfg.steps and group.main:
        run_loop(run, train_cfg, start, update, evaluate, checkpoint, progress, desc=f"train {model}",
                 postfix_keys=("loss/total", "open_loop/ratio_h15"),
                 frames_per_update=train_cfg.batch_size * train_cfg.seq_len, callbacks=callbacks)
    else:  # another rank: the same updates, nothing written (rank 0 validates and checkpoints)
        for step in range(start + 1, train_cfg.steps + 1):
            update(step)
    group.close()
    world_model.eval()
    # The same object load_world_model gives: run_dir, run_config, checkpoint_step, fingerprint.
    world_model.run_dir = run.path
    world_model.run_config = run.read_config() if run.exists() else config
    saved = run.checkpoints()
    world_model.checkpoint_step = int(saved[-1].stem.split("_")[-1]) if saved else start
    world_model.fingerprint = fingerprint(world_model.state_dict())
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
def _validate(world_model, val: _ValidationSampler, cfg: WorldModelTrainConfig, dev) -> dict:
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


def warm_start(world_model: WorldModelBase, source: WorldModelBase, config: dict) -> list[str]:
    """Copy ``source``'s parameters and buffers into ``world_model`` (a new run's, described by
    ``config``), which must be the same kind of model on the same data layout; the tensors the
    source lacks (a head it did not have) keep their fresh initialisation and their names are
    returned. Anything else that does not fit is a UserError naming it."""
    where = source.run_dir
    theirs = source.run_config
    for field in ("model", "spec"):
        if theirs.get(field) != config[field]:
            raise UserError(f"--init-from {where}: its {field} is {theirs.get(field)!r}, this run's is "
                            f"{config[field]!r}; start from a run of the same model on data of the same layout")
    mine = world_model.state_dict()
    given = source.state_dict()
    extra = sorted(set(given) - set(mine))
    if extra:
        raise UserError(f"--init-from {where}: this model has no {', '.join(extra)} (a head or layer the source "
                        "has); set the same model options as the source, except for heads to add")
    wrong = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in mine.items()
             if k in given and given[k].shape != v.shape]
    if wrong:
        raise UserError(f"--init-from {where}: sizes differ ({'; '.join(wrong[:3])}); set the same sizes as the source")
    world_model.load_state_dict({**mine, **given})
    return sorted(set(mine) - set(given))


def load_world_model(run_dir: str | os.PathLike, device: str = "cpu", trust: bool = False) -> WorldModelBase:
    """Load the newest checkpoint of a ``train-model`` run for use (eval mode).

    The model carries ``run_config`` (config.yaml), ``checkpoint_step`` and ``fingerprint`` (a
    hash of its parameters, which imagination runs record to notice a model trained further).
    ``trust`` loads a checkpoint that needs unpickling (older versions; can run code).
    """
    run = RunDir(run_dir, "world_model")
    config = run.read_config()
    run.check_kind(config)
    model = from_config(run, lambda: make_world_model(config["model"], DataSpec.from_dict(config["spec"]), config_for(
        config["model"], config.get("preset", "small"), **config["model_config"])))
    checkpoint = run.load_checkpoint(trust=trust)
    if checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint yet; train the model first (wmil train-model --out {run.path})")
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(f"{run.path}: checkpoint does not fit the model in config.yaml ({str(exc).splitlines()[0]})") from None
    model.to(resolve_device(device))
    model.eval()
    model.run_dir = run.path
    model.run_config = config
    model.checkpoint_step = int(checkpoint["step"])
    model.fingerprint = fingerprint(checkpoint["model"])
    return model
