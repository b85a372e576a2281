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
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import gymnasium as gym
import h5py
import numpy as np

from wmil.data.dataset import Dataset, load, spec_from_spaces
from wmil.data.storage import DatasetWriter, Episode, check_writable
from wmil.errors import UserError

D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")


def _spaces_from_arrays(path: Path, observations: h5py.Dataset, actions: h5py.Dataset,
                        allow_nonfinite: bool) -> tuple[gym.Space, gym.Space]:
    obs_shape = observations.shape[1:]
    if observations.dtype == np.uint8 and len(obs_shape) == 3:
        observation_space = gym.spaces.Box(0, 255, obs_shape, np.uint8)
    elif len(obs_shape) == 1 and (np.issubdtype(observations.dtype, np.integer) or np.issubdtype(observations.dtype, np.floating)):
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
        # Chunked min/max so a large file is not read at once; the bounds come from finite values.
        lo, hi = np.full(actions.shape[1], np.inf), np.full(actions.shape[1], -np.inf)
        for s in range(0, actions.shape[0], 1 << 18):
            chunk = actions[s:s + (1 << 18)]
            finite = np.isfinite(chunk)
            if not finite.all() and not allow_nonfinite:
                row, col = np.argwhere(~finite)[0]
                raise UserError(f"{path}: field 'actions' contains NaN or inf (row {s + row}, column {col}); clean the "
                                "data, or pass --allow-nonfinite if these values are meant to be there")
            lo = np.minimum(lo, np.where(finite, chunk, np.inf).min(0))
            hi = np.maximum(hi, np.where(finite, chunk, -np.inf).max(0))
        low = np.minimum(lo, -1.0).astype(np.float32)
        high = np.maximum(hi, 1.0).astype(np.float32)
        action_space = gym.spaces.Box(low, high, (actions.shape[1],), np.float32)
    else:
        raise UserError(f"{path}: field 'actions' has shape {actions.shape} {actions.dtype}; expected (N,) integers or (N, A) floats")
    return observation_space, action_space


def _flags(path: Path, file: h5py.File, key: str, n: int) -> np.ndarray:
    """A (N,) flag column as bool; values must be exactly 0 or 1 (0.5 is not 'True')."""
    values = file[key][()].reshape(-1)
    if values.dtype != np.bool_:
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            raise UserError(f"{path}: field '{key}' has dtype {values.dtype}; expected booleans (0/1)")
        bad = (values != 0) & (values != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"{path}: field '{key}' row {row} is {values[row].item()!r}; flags must be exactly 0 or 1")
    return values.astype(bool)


def _check_layout(path: Path, file: h5py.File) -> int:
    """The number of rows N; UserError for a layout wmil cannot import."""
    missing = [k for k in D4RL_REQUIRED if k not in file]
    if missing:
        raise UserError(f"{path}: missing field(s) {', '.join(missing)}; a D4RL file needs "
                        f"{', '.join(D4RL_REQUIRED)} (+ timeouts, next_observations optional)")
    keys = list(D4RL_REQUIRED) + [k for k in ("timeouts", "next_observations") if k in file]
    for key in keys:
        if not isinstance(file[key], h5py.Dataset):
            raise UserError(f"{path}: field '{key}' is a group, expected an array with one row per step")
        if len(file[key].shape) == 0:
            raise UserError(f"{path}: field '{key}' is a scalar, expected an array with one row per step")
    n = file["observations"].shape[0]
    for key in keys:
        if file[key].shape[0] != n:
            raise UserError(f"{path}: field '{key}' has {file[key].shape[0]} rows but 'observations' has {n}; all fields need one row per step")
    for key in ("rewards", "terminals", "timeouts"):
        if key in file and file[key].shape[1:] not in ((), (1,)):
            raise UserError(f"{path}: field '{key}' has shape {file[key].shape}, expected ({n},): one value per step")
    if n == 0:
        raise UserError(f"{path}: the file holds no steps (an empty dataset cannot be imported)")
    if "next_observations" in file and file["next_observations"].shape[1:] != file["observations"].shape[1:]:
        raise UserError(f"{path}: field 'next_observations' has shape {file['next_observations'].shape}, expected {file['observations'].shape}")
    return n


def _finite_score(label: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise UserError(f"{label} {value!r}: must be a finite number")
    return float(value)


def import_d4rl(path: str | os.PathLike, name: str, overwrite: bool = False,
                ref_min_score: Optional[float] = None, ref_max_score: Optional[float] = None,
                allow_nonfinite: bool = False) -> Dataset:
    """Import a D4RL-style flat HDF5 file as Minari dataset ``name``.

    Every episode passes the dataset check (``wmil.data.check``) before it is written, NaN/inf
    included unless ``allow_nonfinite``; a damaged file is a one-line error and leaves nothing."""
    check_writable(name, overwrite)
    ref_min_score = _finite_score("--ref-min-score", ref_min_score)
    ref_max_score = _finite_score("--ref-max-score", ref_max_score)
    with _open_d4rl(path) as (path, file):
        observation_space, action_space, episodes = _d4rl_episodes(path, file, allow_nonfinite)
        with DatasetWriter(name, observation_space, action_space, overwrite=overwrite,
                           description=f"imported from {path.name}", allow_nonfinite=allow_nonfinite,
                           algorithm_name=f"wmil datasets import of the D4RL-style file {path.name}") as writer:
            for episode, where in episodes:
                writer.add(episode, where)
            writer.metadata["wmil"] = {"imported_from": str(path.resolve()), "format": "d4rl"}
            for key, value in (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score)):
                value = value if value is not None else _finite_score(f"{path}: attribute {key}", file.attrs.get(key))
                if value is not None:
                    writer.metadata[key] = value
    return load(name)


def check_d4rl(path: str | os.PathLike, allow_nonfinite: bool = False) -> tuple[int, int]:
    """Run the import's checks on a D4RL file without writing anything: (episodes, steps)."""
    with _open_d4rl(path) as (path, file):
        _, _, episodes = _d4rl_episodes(path, file, allow_nonfinite)
        counts = [episode.length for episode, _ in episodes]
    return len(counts), sum(counts)


@contextmanager
def _open_d4rl(path: str | os.PathLike):
    """``(path, open h5py file)``; h5py errors of a damaged file become one-line UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        file = h5py.File(path, "r")
    except (OSError, ValueError):
        raise UserError(f"{path}: not a readable HDF5 file (truncated or corrupted?)") from None
    try:
        with file:
            yield path, file
    except UserError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py reading a damaged file
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{path}: cannot be read ({reason}); the file is truncated or corrupted") from None


def _d4rl_episodes(path: Path, file: h5py.File, allow_nonfinite: bool):
    """The spaces and a generator of checked ``(Episode, where)`` of a D4RL file."""
    from wmil.data.check import FIELDS, check_episode

    n = _check_layout(path, file)
    observation_space, action_space = _spaces_from_arrays(path, file["observations"], file["actions"], allow_nonfinite)
    spec = spec_from_spaces(observation_space, action_space, str(path))
    done = _flags(path, file, "terminals", n)
    timeouts = _flags(path, file, "timeouts", n) if "timeouts" in file else np.zeros(n, bool)
    ends = np.flatnonzero(done | timeouts)
    if len(ends) == 0 or ends[-1] != n - 1:
        ends = np.append(ends, n - 1)  # trailing steps: an episode cut by the end of the file
    has_next = "next_observations" in file
    obs_dtype = observation_space.dtype
    discrete = isinstance(action_space, gym.spaces.Discrete)

    def episodes():
        start = 0
        for end in ends:
            sl = slice(start, end + 1)
            where = f"{path} (rows {sl.start}..{sl.stop - 1})"
            obs = file["observations"][sl]
            actions = file["actions"][sl]
            actions = actions.reshape(-1) if discrete else actions
            rewards = file["rewards"][sl].reshape(-1)
            terms = done[sl].copy()
            truncs = timeouts[sl] & ~terms
            if not (terms[-1] or truncs[-1]):
                truncs[-1] = True
            if has_next:
                obs = np.concatenate([obs, file["next_observations"][end:end + 1]])
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
            # The file's own values first (a float64 1e300 would read as inf once cast to float32).
            check_episode(dict(zip(FIELDS, (obs, actions, rewards, terms, truncs))), spec, where, allow_nonfinite)
            yield Episode(obs.astype(obs_dtype), actions.astype(np.int64) if discrete else actions.astype(np.float32),
                          rewards.astype(np.float64), terms, truncs), where

    return observation_space, action_space, episodes()


def export_d4rl(name_or_path: str, path: str | os.PathLike, overwrite: bool = False,
                allow_nonfinite: bool = False) -> Path:
    """Write a dataset in the flat D4RL layout (with next_observations), after its check."""
    dataset = load(name_or_path)
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the HDF5 file to write, e.g. {path / 'data.hdf5'}")
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: directory not found; create it first or export elsewhere")
    dataset.check(allow_nonfinite)
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
    except OSError as exc:
        raise UserError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _copy(writer: DatasetWriter, dataset: Dataset) -> None:
    for episode in dataset.episodes():
        writer.add(episode)


def merge(sources: list[str], name: str, overwrite: bool = False, allow_nonfinite: bool = False) -> Dataset:
    """Concatenate datasets with identical spaces into a new dataset ``name``."""
    if len(sources) < 2:
        raise UserError("merge needs at least two datasets")
    check_writable(name, overwrite)
    datasets = [load(s) for s in sources]
    for dataset in datasets:
        dataset.check(allow_nonfinite)
    first = datasets[0]
    for other in datasets[1:]:
        if other.observation_space != first.observation_space or other.action_space != first.action_space:
            raise UserError(
                f"cannot merge {other.name} into {first.name}: spaces differ "
                f"({other.observation_space}, {other.action_space} vs {first.observation_space}, {first.action_space})"
            )
    with DatasetWriter(name, first.observation_space, first.action_space, overwrite=overwrite,
                       description=f"merge of {', '.join(d.name for d in datasets)}",
                       allow_nonfinite=allow_nonfinite, algorithm_name="wmil datasets merge") as writer:
        for dataset in datasets:
            _copy(writer, dataset)
        writer.metadata["wmil"] = {"merged_from": [d.name for d in datasets], "env": first.wmil_metadata.get("env")}
        for key in ("ref_min_score", "ref_max_score"):
            values = [d.metadata.get(key) for d in datasets if d.metadata.get(key) is not None]
            if values:
                writer.metadata[key] = values[0]
    return load(name)


def split(source: str, train_name: str, validation_name: str, validation_fraction: float = 0.1,
          seed: int = 0, overwrite: bool = False, allow_nonfinite: bool = False) -> tuple[Dataset, Dataset]:
    """Split a dataset by episode into two new datasets (train, validation)."""
    dataset = load(source)
    dataset.check(allow_nonfinite)
    if len(dataset) < 2:
        raise UserError(f"dataset {dataset.name}: needs at least 2 episodes to split (it has {len(dataset)})")
    for target in (train_name, validation_name):
        check_writable(target, overwrite)
    train, validation = dataset.split(validation_fraction, seed)
    out = []
    for view, target in ((train, train_name), (validation, validation_name)):
        with DatasetWriter(target, dataset.observation_space, dataset.action_space, overwrite=overwrite,
                           description=f"split of {dataset.name}", allow_nonfinite=allow_nonfinite,
                           algorithm_name="wmil datasets split") as writer:
            _copy(writer, view)
            meta = {k: dataset.metadata[k] for k in ("ref_min_score", "ref_max_score") if k in dataset.metadata}
            meta["wmil"] = {**dataset.wmil_metadata, "split_of": dataset.name,
                            "episode_ids": [int(i) for i in view.episode_ids], "split_seed": seed}
            writer.metadata.update(meta)
        out.append(load(target))
    return out[0], out[1]
