"""What every imitation algorithm provides, the registry, and the shared ``wmil imagine`` trainer.

An algorithm is one file in ``wmil/algos/`` with a config dataclass (each field documented, a
``PRESETS`` dict of 'tiny'/'small'/'paper' overrides) and a class implementing
:class:`Algorithm`. The trainer here owns everything else: loading the world model and the
expert data, the run directory, resume, logging, checkpoints and the progress bar.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from wmil.config import override, split_overrides, to_dict
from wmil.data.dataset import Dataset, load
from wmil.errors import UserError
from wmil.runs import RunDir, from_config, resolve_device, rng_state, seed_everything, set_rng_state
from wmil.train.divergence import check_mode
from wmil.train.loop import LoopConfig, check_finite, run_loop

#: name -> "module:Class". Lazy, so the CLI does not import every algorithm.
ALGORITHMS: dict[str, str] = {
    "ditto": "wmil.algos.ditto:Ditto",
    "dgail": "wmil.algos.dgail:DGail",
    "dbc": "wmil.algos.dbc:DBC",
    "bc": "wmil.algos.bc:BC",
    "vins": "wmil.algos.vins:VINS",
    "sqil": "wmil.algos.sqil:Sqil",
    "gpril": "wmil.algos.gpril:Gpril",
}


class Algorithm(Protocol):
    """An imitation learner trained offline inside a world model."""

    name: str
    config_cls: type
    presets: dict[str, dict[str, Any]]

    def __init__(self, world_model, expert: Dataset, config: Any, device: torch.device): ...

    def update(self, step: int) -> dict[str, Any]:
        """One training step; returns metrics (a 'loss/...' entry per optimised loss)."""

    def evaluate(self) -> dict[str, float]:
        """Offline metrics without the environment (e.g. latent distance, action accuracy)."""

    def training_state(self) -> dict: ...

    def load_training_state(self, state: dict) -> None: ...

    def policy(self):
        """The deployable policy (``reset()``, ``act(obs)``) of the current parameters."""


def algorithm_class(name: str):
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    module, _, cls = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class ImagineTrainConfig:
    """Cadence of an imitation run (the algorithm's own config holds its hyperparameters)."""

    steps: int = 2000
    """Training updates."""
    seed: int = 0
    """Seeds initialisation and sampling."""
    expert_episodes: Optional[int] = None
    """Use only the first K expert episodes (None: all)."""
    log_every: int = 25
    """Updates between metric records."""
    eval_every: int = 250
    """Updates between offline evaluations (latent distance, action accuracy)."""
    checkpoint_every: int = 500
    """Updates between checkpoints (the last step is always saved)."""
    on_divergence: str = "stop"
    """'stop' or 'warn' when a gradient norm or metric turns non-finite or a loss jumps far above its running level."""
    allow_nonfinite: bool = False
    """Accept NaN/inf values in the data (an error otherwise: they can only train to NaN)."""


TRAIN_PRESETS = {
    "tiny": dict(steps=30, log_every=5, eval_every=10, checkpoint_every=10),
    "small": dict(),
    "paper": dict(steps=50_000, eval_every=2500, checkpoint_every=5000),
}


def _world_model_from_run(model_run: str | os.PathLike, device: str, trust: bool = False):
    from wmil.train.world_model import load_world_model

    run = RunDir(model_run, "any")
    config = run.read_config() if run.exists() else None
    if config is None:
        raise UserError(f"--model {model_run}: not a world-model run directory (no config.yaml); "
                        "train one with 'wmil train-model'")
    if config.get("kind") != "world_model":
        raise UserError(f"--model {model_run}: holds a {config.get('kind')} run, not a world model")
    return load_world_model(model_run, device, trust=trust)


def train_policy(algo: str, model: Optional[str | os.PathLike], expert: str | Dataset,
                 out: Optional[str | os.PathLike] = None, preset: str = "small", steps: Optional[int] = None,
                 expert_episodes: Optional[int] = None, seed: Optional[int] = None, device: str = "auto",
                 overrides: Optional[dict[str, str]] = None, progress: bool = True, trust_checkpoint: bool = False):
    """Train (or resume) an imitation policy, inside the world model of run ``model`` when the
    algorithm uses one (``model`` may be None for model-free ones such as BC).

    Returns the deployable policy. ``expert`` is a dataset name/path/object; ``overrides``
    are ``-o`` pairs for the run (``steps``…) or the algorithm (``gamma``…). ``trust_checkpoint``
    loads checkpoints that need unpickling (older versions): only for files you trust.
    """
    cls = algorithm_class(algo)
    if preset not in TRAIN_PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    train_cfg = ImagineTrainConfig(**TRAIN_PRESETS[preset])
    algo_cfg = cls.config_cls(**cls.presets.get(preset, {}))
    routed = split_overrides(overrides or {}, {"train": train_cfg, "algo": algo_cfg})
    explicit = {k: v for k, v in (("steps", steps), ("seed", seed), ("expert_episodes", expert_episodes)) if v is not None}
    train_cfg = override(train_cfg, {**routed["train"], **explicit}, "the run")
    algo_cfg = override(algo_cfg, routed["algo"], algo)
    dev = resolve_device(device)
    needs_model = getattr(cls, "needs_world_model", True)
    if needs_model and model is None:
        raise UserError(f"--algo {algo} trains inside a world model: pass --model RUN_DIR (from wmil train-model)")
    world_model = _world_model_from_run(model, str(dev), trust_checkpoint) if model is not None else None
    expert_ds = expert if isinstance(expert, Dataset) else load(expert)
    if world_model is not None and expert_ds.spec != world_model.spec:
        raise UserError(f"expert dataset {expert_ds.name} has {expert_ds.spec.describe()} but the world model in "
                        f"{model} was trained on {world_model.spec.describe()}; use an expert dataset of the same "
                        "environment and observation settings")
    if train_cfg.expert_episodes is not None:
        if not 1 <= train_cfg.expert_episodes <= len(expert_ds):
            raise UserError(f"--expert-episodes {train_cfg.expert_episodes}: the expert dataset {expert_ds.name} "
                            f"has {len(expert_ds)} episodes")
        expert_ds = expert_ds.head(train_cfg.expert_episodes)

    check_mode(train_cfg.on_divergence)
    expert_ds.check(train_cfg.allow_nonfinite)  # every used episode, before anything is written
    run = RunDir(out or Path("runs") / f"{algo}-{expert_ds.name.replace('/', '-')}", "policy")
    wm_config = world_model.run_config if world_model is not None else None
    config = {
        "algo": algo, "preset": preset, "world_model_run": str(Path(model).resolve()) if model is not None else None,
        "world_model": {k: wm_config[k] for k in ("model", "preset", "spec", "model_config")} if wm_config else None,
        "world_model_checkpoint": {"step": world_model.checkpoint_step, "sha256": world_model.fingerprint}
        if world_model is not None else None,
        "spec": expert_ds.spec.to_dict(), "expert": expert_ds.name, "expert_episode_ids": [int(i) for i in expert_ds.episode_ids],
        "env": expert_ds.wmil_metadata.get("env"),
        "ref_min_score": expert_ds.ref_min_score, "ref_max_score": expert_ds.ref_max_score,
        "train": to_dict(train_cfg), "algo_config": to_dict(algo_cfg),
    }
    resume = run.start_or_resume(config, trust=trust_checkpoint)
    seed_everything(train_cfg.seed)
    if world_model is not None:
        for parameter in world_model.parameters():
            parameter.requires_grad_(False)  # the model is fixed; gradients still flow through it
    learner = cls(world_model, expert_ds, algo_cfg, dev)
    start = 0
    if resume is not None:
        learner.load_training_state(resume["algo"])
        set_rng_state(resume["rng"])
        start = int(resume["step"])
        run.truncate_metrics(start)

    def update(step: int) -> dict:
        metrics = learner.update(step)
        check_finite(step, {k: v for k, v in metrics.items() if k.startswith("loss/")}, run)
        return metrics

    def checkpoint() -> dict:
        return {"algo": learner.training_state(), "rng": rng_state(),
                "world_model": world_model.state_dict() if world_model is not None else None}

    loop = LoopConfig(train_cfg.steps, train_cfg.log_every, train_cfg.eval_every, train_cfg.checkpoint_every,
                      on_divergence=train_cfg.on_divergence)
    if start < train_cfg.steps:
        run_loop(run, loop, start, update, lambda step: learner.evaluate(), checkpoint, progress,
                 desc=f"imagine {algo}", postfix_keys=learner.progress_keys)
    return learner.policy()


def load_policy(run_dir: str | os.PathLike, device: str = "cpu", trust: bool = False):
    """The deployable policy of a ``wmil imagine`` (or ``wmil train-policy``) run. ``trust``
    loads a checkpoint that needs unpickling (older versions; can run code)."""
    from wmil.types import DataSpec
    from wmil.world_models.registry import config_for, make_world_model

    run = RunDir(run_dir, "policy")
    config = run.read_config()
    run.check_kind(config)
    checkpoint = run.load_checkpoint(trust=trust)
    if checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint yet; train the policy first")

    def build():
        cls = algorithm_class(config["algo"])
        recorded = config["algo_config"]
        if "features" in {f.name for f in fields(cls.config_cls)} and "features" not in recorded:
            recorded = {**recorded, "features": "sample"}  # runs from before the option read sampled features
        algo_cfg = override(cls.config_cls(), recorded)
        world_model = None
        if config.get("world_model"):  # BC acts on observations and has none
            wm = config["world_model"]
            world_model = make_world_model(wm["model"], DataSpec.from_dict(wm["spec"]),
                                           config_for(wm["model"], wm.get("preset", "small"), **wm["model_config"]))
            world_model.load_state_dict(checkpoint["world_model"])
            world_model.eval()
        return cls.deployable(world_model, algo_cfg, checkpoint["algo"], DataSpec.from_dict(config["spec"]))

    policy = from_config(run, build)
    policy.run_config = config
    return policy.to(resolve_device(device))
