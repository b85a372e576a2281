"""``wmil imagine``: train an imitation policy (inside a world model where the algorithm uses one).

The trainer owns the run: it loads the world model and the expert data, checks that they fit,
writes the run directory, resumes exactly from its newest checkpoint, logs and checkpoints at
the cadence of :class:`ImagineTrainConfig`; the algorithm (a :class:`~wmil.algos.base.Learner`)
supplies its updates, its offline evaluation, its training state and its deployable policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional, Sequence

from wmil import distributed
from wmil.algos.base import algorithm_class
from wmil.config import ALGORITHMS, LoopConfig, PosInt, build_config, split_overrides, to_dict
from wmil.data.dataset import Dataset, load
from wmil.errors import UserError
from wmil.nets import reducing_gradients
from wmil.policy import DeployedPolicy
from wmil.precision import autocast, warn_if_emulated
from wmil.runs import RunDir, from_config, resolve_device, rng_state, seed_everything, set_rng_state
from wmil.train.loop import check_finite, run_loop
from wmil.train.world_model import load_world_model
from wmil.types import DataSpec
from wmil.world_models.registry import config_for, make_world_model


@dataclass(frozen=True)
class ImagineTrainConfig(LoopConfig):
    """Cadence of an imitation run (the algorithm's own config holds its hyperparameters)."""

    expert_episodes: Optional[PosInt] = None
    """Use only the first K expert episodes (None: all)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """'fp32', or 'bf16' autocast for the forward passes of the updates (the world model's imagination, the learner's networks); every network head's output, latents, rewards, λ-returns, log-probabilities and losses stay float32. Offline evaluations run in fp32."""

    PRESETS: ClassVar = {
        "tiny": dict(steps=30, log_every=5, eval_every=10, checkpoint_every=10),
        "small": dict(),
        "paper": dict(steps=50_000, eval_every=2500, checkpoint_every=5000),
    }


def _world_model_from_run(model_run: str | os.PathLike, device: str, trust: bool = False):
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
                 overrides: Optional[dict[str, str]] = None, progress: bool = True,
                 trust_checkpoint: bool = False, precision: Optional[str] = None,
                 callbacks: Sequence[Callable[[int, dict], Any]] = ()) -> DeployedPolicy:
    """Train (or resume) an imitation policy, inside the world model of run ``model`` when the
    algorithm uses one (``model`` may be None for model-free ones such as BC).

    Returns the deployable policy (``run_dir`` set to its run directory). ``expert`` is a dataset name/path/object; ``overrides``
    are ``-o`` pairs for the run (``steps``…) or the algorithm (``gamma``…). ``trust_checkpoint``
    loads checkpoints that need unpickling (older versions): only for files you trust.
    ``precision``: 'fp32' or 'bf16' (default: the preset's, fp32; see :class:`ImagineTrainConfig`).
    ``callbacks``: functions ``(step, metrics)`` called with every logged row (evaluation rows
    included); one that returns True stops training there, after a checkpoint.
    """
    cls = algorithm_class(algo)
    routed = split_overrides(overrides or {}, {"train": ImagineTrainConfig, "algo": cls.config_cls})
    explicit = {k: v for k, v in (("steps", steps), ("seed", seed), ("expert_episodes", expert_episodes),
                                  ("precision", precision)) if v is not None}
    train_cfg = build_config(ImagineTrainConfig, preset, {**routed["train"], **explicit}, "the run")
    algo_cfg = build_config(cls.config_cls, preset, routed["algo"], algo)
    dev = resolve_device(device)
    if cls.world_models is not None and model is None:
        raise UserError(f"--algo {algo} trains inside a world model: pass --model RUN_DIR (from wmil train-model)")
    if distributed.launched()[1] > 1:
        if not cls.data_parallel:
            raise UserError(f"--algo {algo} does not run data-parallel (it draws its batches outside the shared "
                            f"samplers); run it in one process, without torchrun (data-parallel: "
                            f"{', '.join(sorted(n for n in ALGORITHMS if algorithm_class(n).data_parallel))})")
        refusal = cls.parallel_refusal(algo_cfg)
        if refusal:
            raise UserError(f"--algo {algo} under torchrun: {refusal}")
        if callbacks:  # a callback's stop on rank 0 would leave the others waiting
            raise UserError("callbacks run in one process only; train without torchrun to use them")
    group = distributed.current(dev)  # under torchrun: this rank's share (wmil.distributed)
    dev = group.device                # on a GPU node: the local rank's GPU
    if group.main:
        warn_if_emulated(dev, train_cfg.precision)
    world_model = (_world_model_from_run(model, str(dev), trust_checkpoint)
                   if model is not None and cls.world_models is not None else None)
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

    expert_ds.check(train_cfg.allow_nonfinite)  # every used episode, before anything is written
    run = RunDir(out or Path("runs") / f"{algo}-{expert_ds.name.replace('/', '-')}", "policy")
    wm_config = world_model.run_config if world_model is not None else None
    config = {
        "algo": algo, "preset": preset,
        "world_model_run": str(Path(model).resolve()) if world_model is not None else None,
        "world_model": {k: wm_config[k] for k in ("model", "preset", "spec", "model_config")} if wm_config else None,
        "world_model_checkpoint": {"step": world_model.checkpoint_step, "sha256": world_model.fingerprint}
        if world_model is not None else None,
        "spec": expert_ds.spec.to_dict(), "expert": expert_ds.name,
        "expert_episode_ids": [int(i) for i in expert_ds.episode_ids],
        "env": expert_ds.wmil_metadata.get("env"),
        "ref_min_score": expert_ds.ref_min_score, "ref_max_score": expert_ds.ref_max_score,
        "train": to_dict(train_cfg), "algo_config": to_dict(algo_cfg), "world_size": group.size,
    }
    # What runs written before these fields existed did: fp32, one process.
    resume = group.open_run(run, config, trust_checkpoint, defaults={"train.precision": "fp32", "world_size": 1,
                                                                   "algo_config.continue_discount": True,
                                                                   # DITTO before its world-data starts:
                                                                   "algo_config.starts": "expert",
                                                                   "algo_config.world_episodes": 200})
    seed_everything(train_cfg.seed)
    if world_model is not None:
        for parameter in world_model.parameters():
            parameter.requires_grad_(False)  # the model is fixed; gradients still flow through it
    learner = cls(world_model, expert_ds, algo_cfg, dev)
    learner.group = group
    for field, count in learner.batch_counts().items():
        group.check_batch(count, field)
    start = 0
    if resume is not None:
        learner.load_training_state(resume["algo"])
        set_rng_state(resume["rng"])
        start = int(resume["step"])
        if group.main:
            run.truncate_metrics(start)
    group.reseed(train_cfg.seed, start)

    def update(step: int) -> dict:
        with autocast(dev, train_cfg.precision), reducing_gradients(group.average_gradients if group.parallel
                                                                     else None):
            metrics = learner.train_step(step)
        check_finite(step, {k: v for k, v in metrics.items() if k.startswith("loss/")}, run)
        return group.average_scalars(metrics)

    def evaluate(step: int) -> dict:
        with learner.whole_batches():  # rank 0 alone: what one process would draw
            return learner.evaluate()

    def checkpoint() -> dict:
        return {"algo": learner.training_state(), "rng": rng_state(),
                "world_model": world_model.state_dict() if world_model is not None else None}

    if start < train_cfg.steps and group.main:
        run_loop(run, train_cfg, start, update, evaluate, checkpoint, progress,
                 desc=f"imagine {algo}", postfix_keys=learner.progress_keys, callbacks=callbacks)
    else:  # another rank: the same updates, nothing written (rank 0 evaluates and checkpoints)
        for step in range(start + 1, train_cfg.steps + 1):
            update(step)
    group.close()
    policy = learner.policy()
    policy.run_dir = run.path  # where the CLI's summary and the user find the run
    return policy


def load_policy(run_dir: str | os.PathLike, device: str = "cpu", trust: bool = False) -> DeployedPolicy:
    """The deployable policy of a ``wmil imagine`` run (``reset()``, ``act(obs)``); its
    ``run_config`` holds the run's config. ``trust`` loads a checkpoint that needs unpickling
    (older versions; it can run code)."""
    run = RunDir(run_dir, "policy")
    config = run.read_config()
    run.check_kind(config)
    checkpoint = run.load_checkpoint(trust=trust)
    if checkpoint is None:
        raise UserError(f"{run.path}: no checkpoint yet; train the policy first")

    def build():
        cls = algorithm_class(config["algo"])
        algo_cfg = build_config(cls.config_cls, "small", config["algo_config"], f"{run.config_path} (algo_config)")
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
