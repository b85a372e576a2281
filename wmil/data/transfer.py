"""Import, export, merge and split datasets.

D4RL-style flat HDF5 layout (one row per step, episodes laid end to end):

    observations       (N, *O)   observation at each step
    actions            (N,) int or (N, A) float
    rewards            (N,)
    terminals          (N,) bool  the step ended the episode in a terminal state
    timeouts           (N,) bool  the step ended the episode by a time limit
    next_observations  (N, *O)   optional: observation after each step

Importing splits episodes after every step with ``terminals | timeouts``. With
``next_observations`` an episode of T steps keeps T+1 observations (the last one from
``next_observations``); without it the last step of each episode is dropped (its next
observation is unknown), leaving T-1 actions and T observations. Exporting always writes
``next_observations``, so import → export → import is exact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import gymnasium as gym
import h5py
import numpy as np

from wmil.data.dataset import Dataset, load, spec_from_spaces
from wmil.data.storage import DatasetWriter, Episode, check_finite, check_writable
from wmil.errors import UserError

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def _spaces_from_arrays(path: Path, observations: h5py.Dataset, actions: h5py.Dataset) -> tuple[gym.Space, gym.Space]:
    obs_shape = observations.shape[1:]
    if observations.dtype == np.uint8 and len(obs_shape) == 3:
        observation_space = gym.spaces.Box(0, 255, obs_shape, np.uint8)
    elif len(obs_shape) == 1 and np.issubdtype(observations.dtype, np.number):
        observation_space = gym.spaces.Box(-np.inf, np.inf, obs_shape, np.float32)
    else:
        raise UserError(f"{path}: field 'observations' has shape {observations.shape} {observations.dtype}; "
                        "expected (N, D) numbers or (N, C, H, W) uint8")
    if np.issubdtype(actions.dtype, np.integer) and (actions.ndim == 1 or actions.shape[1:] == (1,)):
        values = actions[()].reshape(-1)
        if values.min() < 0:
            raise UserError(f"{path}: field 'actions' holds negative integers; discrete actions must be 0..n-1")
        action_space: gym.Space = gym.spaces.Discrete(int(values.max()) + 1)
    elif actions.ndim == 2 and np.issubdtype(actions.dtype, np.floating):
        # Chunked min/max so a large file is not read at once.
        lo, hi = np.full(actions.shape[1], np.inf), np.full(actions.shape[1], -np.inf)
        for s in range(0, actions.shape[0], 1 << 18):
            chunk = actions[s:s + (1 << 18)]
            lo, hi = np.minimum(lo, chunk.min(0)), np.maximum(hi, chunk.max(0))
        low = np.minimum(lo, -1.0).astype(np.float32)
        high = np.maximum(hi, 1.0).astype(np.float32)
        action_space = gym.spaces.Box(low, high, (actions.shape[1],), np.float32)
    else:
        raise UserError(f"{path}: field 'actions' has shape {actions.shape} {actions.dtype}; expected (N,) integers or (N, A) floats")
    return observation_space, action_space


def import_d4rl(path: str | os.PathLike, name: str, overwrite: bool = False,
                ref_min_score: Optional[float] = None, ref_max_score: Optional[float] = None) -> Dataset:
    """Import a D4RL-style flat HDF5 file as Minari dataset ``name``."""
    path = Path(path)
    check_writable(name, overwrite)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        file = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupted?)") from None
    with file:
        missing = [k for k in D4RL_REQUIRED if k not in file]
        if missing:
            raise UserError(f"{path}: missing field(s) {', '.join(missing)}; a D4RL file needs "
                            f"{', '.join(D4RL_REQUIRED)} (+ timeouts, next_observations optional)")
        n = file["observations"].shape[0]
        keys = list(D4RL_REQUIRED) + [k for k in ("timeouts", "next_observations") if k in file]
        for key in keys:
            if file[key].shape[0] != n:
                raise UserError(f"{path}: field '{key}' has {file[key].shape[0]} rows but 'observations' has {n}; all fields need one row per step")
        if n == 0:
            raise UserError(f"{path}: the file holds no steps (an empty dataset cannot be imported)")
        observation_space, action_space = _spaces_from_arrays(path, file["observations"], file["actions"])
        spec_from_spaces(observation_space, action_space, str(path))
        if "next_observations" in file and file["next_observations"].shape[1:] != file["observations"].shape[1:]:
            raise UserError(f"{path}: field 'next_observations' has shape {file['next_observations'].shape}, expected {file['observations'].shape}")
        done = file["terminals"][()].astype(bool).reshape(-1)
        timeouts = file["timeouts"][()].astype(bool).reshape(-1) if "timeouts" in file else np.zeros(n, bool)
        ends = np.flatnonzero(done | timeouts)
        if len(ends) == 0 or ends[-1] != n - 1:
            ends = np.append(ends, n - 1)  # trailing steps: an episode cut by the end of the file
        has_next = "next_observations" in file
        obs_dtype = observation_space.dtype
        discrete = isinstance(action_space, gym.spaces.Discrete)
        with DatasetWriter(name, observation_space, action_space, overwrite=overwrite,
                           description=f"imported from {path.name}",
                           algorithm_name=f"wmil datasets import of the D4RL-style file {path.name}") as writer:
            start = 0
            for end in ends:
                sl = slice(start, end + 1)
                obs = file["observations"][sl].astype(obs_dtype)
                actions = file["actions"][sl]
                actions = actions.reshape(-1).astype(np.int64) if discrete else actions.astype(np.float32)
                rewards = file["rewards"][sl].astype(np.float64).reshape(-1)
                terms = done[sl].copy()
                truncs = timeouts[sl] & ~terms
                if not (terms[-1] or truncs[-1]):
                    truncs[-1] = True
                if has_next:
                    obs = np.concatenate([obs, file["next_observations"][end:end + 1].astype(obs_dtype)])
                else:
                    # Without next_observations the last step's successor is unknown: drop the
                    # step. Its source observation is then the last one, and it is not terminal
                    # (only its unknown successor was), so the shortened episode is truncated.
                    actions, rewards = actions[:-1], rewards[:-1]
                    terms, truncs = terms[:-1], truncs[:-1]
                    if len(terms):
                        terms[-1], truncs[-1] = False, True
                start = end + 1
                if len(actions) == 0:
                    continue
                episode = Episode(obs, actions, rewards, terms, truncs)
                check_finite(episode, f"{path} (steps {sl.start}..{sl.stop - 1})")
                writer.add(episode)
            writer.metadata["wmil"] = {"imported_from": str(path.resolve()), "format": "d4rl"}
            for key, value in (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score)):
                value = value if value is not None else file.attrs.get(key)
                if value is not None:
                    writer.metadata[key] = float(value)
    return load(name)


def export_d4rl(name_or_path: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a dataset in the flat D4RL layout (with next_observations)."""
    dataset = load(name_or_path)
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    spec = dataset.spec
    n = dataset.total_steps
    if n == 0:
        raise UserError(f"dataset {dataset.name}: no steps to export")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as out:
            obs = out.create_dataset("observations", (n, *spec.obs_shape), dtype=spec.obs_dtype)
            nxt = out.create_dataset("next_observations", (n, *spec.obs_shape), dtype=spec.obs_dtype)
            if spec.discrete:
                act = out.create_dataset("actions", (n,), dtype=np.int64)
            else:
                act = out.create_dataset("actions", (n, spec.action_dim), dtype=np.float32)
            rew = out.create_dataset("rewards", (n,), dtype=np.float64)
            term = out.create_dataset("terminals", (n,), dtype=bool)
            tout = out.create_dataset("timeouts", (n,), dtype=bool)
            row = 0
            for episode in dataset.episodes():
                T = episode.length
                if T == 0:
                    continue
                sl = slice(row, row + T)
                obs[sl] = episode.observations[:-1]
                nxt[sl] = episode.observations[1:]
                act[sl] = episode.actions
                rew[sl] = episode.rewards
                term[sl] = episode.terminations
                truncs = episode.truncations.copy()
                if not (episode.terminations[-1] or truncs[-1]):
                    truncs[-1] = True  # mark the episode boundary so a re-import splits here
                tout[sl] = truncs
                row += T
            for key in ("ref_min_score", "ref_max_score"):
                if dataset.metadata.get(key) is not None:
                    out.attrs[key] = dataset.metadata[key]
            out.attrs["source_dataset"] = dataset.name
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _copy(writer: DatasetWriter, dataset: Dataset) -> None:
    for episode in dataset.episodes():
        writer.add(episode)


def merge(sources: list[str], name: str, overwrite: bool = False) -> Dataset:
    """Concatenate datasets with identical spaces into a new dataset ``name``."""
    if len(sources) < 2:
        raise UserError("merge needs at least two datasets")
    check_writable(name, overwrite)
    datasets = [load(s) for s in sources]
    first = datasets[0]
    for other in datasets[1:]:
        if other.observation_space != first.observation_space or other.action_space != first.action_space:
            raise UserError(
                f"cannot merge {other.name} into {first.name}: spaces differ "
                f"({other.observation_space}, {other.action_space} vs {first.observation_space}, {first.action_space})"
            )
    with DatasetWriter(name, first.observation_space, first.action_space, overwrite=overwrite,
                       description=f"merge of {', '.join(d.name for d in datasets)}",
                       algorithm_name="wmil datasets merge") as writer:
        for dataset in datasets:
            _copy(writer, dataset)
        writer.metadata["wmil"] = {"merged_from": [d.name for d in datasets], "env": first.wmil_metadata.get("env")}
        for key in ("ref_min_score", "ref_max_score"):
            values = [d.metadata.get(key) for d in datasets if d.metadata.get(key) is not None]
            if values:
                writer.metadata[key] = values[0]
    return load(name)


def split(source: str, train_name: str, validation_name: str, validation_fraction: float = 0.1,
          seed: int = 0, overwrite: bool = False) -> tuple[Dataset, Dataset]:
    """Split a dataset by episode into two new datasets (train, validation)."""
    dataset = load(source)
    if len(dataset) < 2:
        raise UserError(f"dataset {dataset.name}: needs at least 2 episodes to split (it has {len(dataset)})")
    for target in (train_name, validation_name):
        check_writable(target, overwrite)
    train, validation = dataset.split(validation_fraction, seed)
    out = []
    for view, target in ((train, train_name), (validation, validation_name)):
        with DatasetWriter(target, dataset.observation_space, dataset.action_space, overwrite=overwrite,
                           description=f"split of {dataset.name}", algorithm_name="wmil datasets split") as writer:
            _copy(writer, view)
            meta = {k: dataset.metadata[k] for k in ("ref_min_score", "ref_max_score") if k in dataset.metadata}
            meta["wmil"] = {**dataset.wmil_metadata, "split_of": dataset.name,
                            "episode_ids": [int(i) for i in view.episode_ids], "split_seed": seed}
            writer.metadata.update(meta)
        out.append(load(target))
    return out[0], out[1]
