"""Reading datasets: a cheap view over a Minari HDF5 dataset, per-episode access, samplers.

``load(name_or_path)`` returns a :class:`Dataset`: the storage plus an array of selected
episode ids. ``select``/``filter``/``split`` return new views without copying data.

Two samplers follow the time alignment of ``wmil.types`` (the only place indices are shifted):

* :class:`SequenceSampler` — windows ``(B, T)`` from whole episodes, never crossing an
  episode end. Episodes shorter than T are skipped, or right-padded with ``mask=False`` when
  ``pad=True``.
* :class:`TransitionSampler` — single transitions ``(s, a, r, s', done)``.

Vector datasets are read into RAM once as aligned flat arrays (a 1M-step dataset of 17-D
observations is ~70 MB). Pixel observations are read out of core from the HDF5 file, window
by window, unless they fit the in-memory budget.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import gymnasium as gym
import h5py
import numpy as np
import torch

from wmil.data import names
from wmil.data.storage import Episode
from wmil.errors import UserError
from wmil.types import DataSpec, SequenceBatch, TransitionBatch

#: Datasets whose observations take at most this many bytes are loaded into RAM for sampling,
#: larger ones are read from disk (through the OS page cache) window by window. None: the
#: default of :func:`memory_budget`. Set by ``--memory-budget`` (:func:`set_memory_budget`) or
#: the ``WMIL_IN_MEMORY_BYTES`` environment variable.
IN_MEMORY_BYTES: Optional[int] = None

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30,
          "tb": 10**12, "tib": 2**40}


def parse_size(value, where: str = "--memory-budget") -> int:
    """Bytes from ``'4GB'``, ``'512MiB'``, ``'2e9'`` or an int; a one-line UserError otherwise."""
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise UserError(f"{where}={value!r}: expected a size such as 4GB, 512MiB or 2000000000 (bytes)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def available_memory() -> Optional[int]:
    """Bytes of memory available to new work now (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_budget() -> int:
    """The in-memory limit for a dataset's observations: ``--memory-budget`` / ``WMIL_IN_MEMORY_BYTES`` when
    set, else 2 GiB or a quarter of the memory available now, whichever is smaller (sampling
    from disk costs little: ``benchmarks/results/memory.md``)."""
    if IN_MEMORY_BYTES is not None:
        return IN_MEMORY_BYTES
    env = os.environ.get("WMIL_IN_MEMORY_BYTES", "").strip()
    if env:
        return parse_size(env, "WMIL_IN_MEMORY_BYTES")
    available = available_memory()
    return min(2 * 2**30, available // 4) if available else 2 * 2**30


def set_memory_budget(value) -> None:
    """Load datasets whose observations take at most ``value`` bytes (or a size string) into
    memory, read larger ones from disk (None: back to the default)."""
    global IN_MEMORY_BYTES
    IN_MEMORY_BYTES = None if value is None else parse_size(value)
_MAIN_FILE = "main_data.hdf5"


def load(name_or_path: str | os.PathLike) -> "Dataset":
    """Open a dataset by Minari name (``ns/name-v0``) or by path to its directory."""
    return Dataset(names.resolve(name_or_path))


def spec_from_spaces(observation_space: gym.Space, action_space: gym.Space, where: str) -> DataSpec:
    if not isinstance(observation_space, gym.spaces.Box):
        raise UserError(
            f"{where}: unsupported observation space {type(observation_space).__name__}; wmil reads Box "
            "observations (vectors or uint8 (C, H, W) images); record goal envs through wmil to flatten them"
        )
    obs_shape = tuple(int(x) for x in observation_space.shape)
    if len(obs_shape) == 3:
        if observation_space.dtype != np.uint8:
            raise UserError(f"{where}: image observations must be uint8, got {observation_space.dtype}")
        obs_dtype = "uint8"
    elif len(obs_shape) == 1:
        obs_dtype = "float32"
    else:
        raise UserError(f"{where}: observation shape {obs_shape} is neither a vector (D,) nor an image (C, H, W)")
    if isinstance(action_space, gym.spaces.Discrete):
        return DataSpec(obs_shape, obs_dtype, int(action_space.n), True)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return DataSpec(obs_shape, obs_dtype, int(action_space.shape[0]), False,
                        tuple(float(x) for x in action_space.low), tuple(float(x) for x in action_space.high))
    raise UserError(f"{where}: unsupported action space {action_space}; wmil handles Discrete and 1-D Box actions")


def _read_metadata(data_dir: Path) -> dict:
    path = data_dir / "metadata.json"
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise UserError(f"{path}: unreadable metadata ({exc}); the dataset is damaged, rebuild or re-import it") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{path}: metadata is not a JSON object; the dataset is damaged, rebuild or re-import it")
    return metadata


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = str(exc).split("(")[0].strip()
        raise UserError(f"{path}: cannot read HDF5 file ({reason}); it is truncated or corrupted, rebuild or re-import the dataset") from None


class Dataset:
    """A view over a Minari HDF5 dataset: storage + selected episode ids."""

    def __init__(self, data_dir: Path, episode_ids: Optional[np.ndarray] = None):
        self.data_dir = Path(data_dir)
        self.metadata = _read_metadata(self.data_dir)
        self.name = self.metadata.get("dataset_id", str(self.data_dir.parent))
        if self.metadata.get("data_format", "hdf5") != "hdf5":
            raise UserError(f"dataset {self.name}: data_format {self.metadata.get('data_format')!r} is not supported; wmil reads hdf5 datasets")
        self.h5_path = self.data_dir / _MAIN_FILE
        if not self.h5_path.is_file():
            raise UserError(f"dataset {self.name}: {self.h5_path} is missing; rebuild or re-import the dataset")
        from minari.serialization import deserialize_space

        try:
            self.observation_space = deserialize_space(self.metadata["observation_space"])
            self.action_space = deserialize_space(self.metadata["action_space"])
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{self.data_dir / 'metadata.json'}: field 'observation_space'/'action_space' missing or invalid ({exc})") from None
        total = self.metadata.get("total_episodes", 0)
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise UserError(f"{self.data_dir / 'metadata.json'}: field 'total_episodes' is {total!r}, expected a "
                            "count; the dataset is damaged, rebuild or re-import it")
        self.episode_ids = np.arange(total) if episode_ids is None else np.asarray(episode_ids, dtype=np.int64)
        self._file: Optional[h5py.File] = None
        #: Accept NaN/inf in observations, rewards and actions (``--allow-nonfinite``).
        self.allow_nonfinite = False
        self._report = None   # the CheckReport of this view, once checked

    # ---- basic facts -------------------------------------------------------------------
    @cached_property
    def spec(self) -> DataSpec:
        return spec_from_spaces(self.observation_space, self.action_space, f"dataset {self.name}")

    def __len__(self) -> int:
        return len(self.episode_ids)

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            self._file = _open_h5(self.h5_path)
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def _group(self, episode_id: int) -> h5py.Group:
        try:
            return self.file[f"episode_{int(episode_id)}"]
        except KeyError:
            raise UserError(f"dataset {self.name}: episode {episode_id} is missing from {self.h5_path}; the file is truncated, rebuild it") from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise UserError(f"dataset {self.name}: episode {episode_id} cannot be read from {self.h5_path} "
                            f"({(str(exc).splitlines() or [type(exc).__name__])[0][:120]}); the file is corrupted, "
                            "rebuild or re-import it") from None

    def check(self, allow_nonfinite: Optional[bool] = None):
        """Verify every episode of this view once (``wmil.data.check``); returns the CheckReport.

        Reading data (samplers, ``episode``, ``summary``) runs it first, so nothing is trained
        on or reported from a dataset that fails it. ``allow_nonfinite`` (default: this view's
        :attr:`allow_nonfinite`) accepts NaN/inf values."""
        from wmil.data.check import check_dataset

        if allow_nonfinite is not None:
            self.allow_nonfinite = bool(allow_nonfinite)
        done = self._report
        if done is None or (done.nonfinite_allowed and not self.allow_nonfinite):
            self._report = check_dataset(self, self.allow_nonfinite)
        return self._report

    @cached_property
    def lengths(self) -> np.ndarray:
        """Number of actions T of every selected episode (from the array shapes alone)."""
        out = np.empty(len(self.episode_ids), np.int64)
        for k, i in enumerate(self.episode_ids):
            group = self._group(i)
            actions = group.get("actions") if isinstance(group, h5py.Group) else None
            if not isinstance(actions, h5py.Dataset) or len(actions.shape) == 0:
                raise UserError(f"dataset {self.name}: episode {int(i)} field 'actions' is missing or not an array; "
                                "the dataset is damaged (wmil datasets check names every problem)")
            out[k] = actions.shape[0]
        return out

    @property
    def total_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def ref_min_score(self) -> Optional[float]:
        return self.metadata.get("ref_min_score")

    @property
    def ref_max_score(self) -> Optional[float]:
        return self.metadata.get("ref_max_score")

    @property
    def wmil_metadata(self) -> dict:
        return self.metadata.get("wmil", {})

    def __repr__(self) -> str:
        o, a = self.observation_space, self.action_space
        return (f"Dataset({self.name!r}, episodes={len(self)}, steps={self.total_steps}, "
                f"obs={o.shape} {o.dtype}, action={a})")

    # ---- episodes ----------------------------------------------------------------------
    def observations(self, i: int, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Observations ``start:stop`` of the i-th selected episode, read from the file alone (the
        out-of-core samplers' read; unlike :meth:`episode` it does not run the check)."""
        return self._group(self.episode_ids[i])["observations"][start:stop]

    def episode(self, i: int) -> Episode:
        """The i-th selected episode, read whole (after the dataset's check)."""
        self.check()
        group = self._group(self.episode_ids[i])
        infos = {}
        if "infos" in group:
            for key, value in group["infos"].items():
                if isinstance(value, h5py.Dataset):
                    infos[key] = value[()]
        observations = group["observations"]
        if not isinstance(observations, h5py.Dataset):
            self.spec  # raises the unsupported-space error for dict observations
        seed = group.attrs.get("seed")
        return Episode(
            observations=observations[()],
            actions=group["actions"][()],
            rewards=group["rewards"][()],
            terminations=group["terminations"][()],
            truncations=group["truncations"][()],
            infos=infos,
            seed=None if seed is None else int(seed),
        )

    def episodes(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.episode(i)

    def returns(self) -> np.ndarray:
        return np.array([float(self._group(i)["rewards"][()].sum()) for i in self.episode_ids])

    def successes(self) -> Optional[np.ndarray]:
        """Final ``is_success`` of every episode, or None when the dataset has none."""
        values = []
        for i in self.episode_ids:
            group = self._group(i)
            if "infos" not in group or "is_success" not in group["infos"]:
                return None
            values.append(float(group["infos"]["is_success"][-1]))
        return np.array(values)

    def summary(self) -> dict:
        """Episode, step, return and length statistics plus spaces (``wmil datasets info``); a
        dataset that fails its check has none (UserError)."""
        self.check()
        lengths, returns = self.lengths, self.returns()
        stats = lambda x: {"mean": float(np.mean(x)), "std": float(np.std(x)), "min": float(np.min(x)),
                           "max": float(np.max(x))} if len(x) else None
        out = {
            "name": self.name, "path": str(self.data_dir.parent), "episodes": len(self),
            "steps": int(lengths.sum()), "return": stats(returns), "length": stats(lengths),
            "observation_space": str(self.observation_space), "action_space": str(self.action_space),
            "ref_min_score": self.ref_min_score, "ref_max_score": self.ref_max_score,
        }
        success = self.successes()
        if success is not None:
            out["success_rate"] = float(success.mean())
        wmil = self.wmil_metadata
        if "parts" in wmil:
            out["policy"] = ", ".join(f"{p['policy']} eps={p['epsilon']:g} x{p['episodes']}" for p in wmil["parts"])
        for key in ("env", "seed", "imported_from", "merged_from", "split_of"):
            if key in wmil:
                out[key] = wmil[key]
        return out

    # ---- views -------------------------------------------------------------------------
    def select(self, indices) -> "Dataset":
        """A view of the given positions (into this view's episodes)."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise UserError(f"dataset {self.name}: episode index out of range (it has {len(self)} episodes)")
        view = Dataset(self.data_dir, self.episode_ids[indices])
        view.allow_nonfinite = self.allow_nonfinite
        if self._report is not None:  # every episode of a checked view passed
            from wmil.data.check import CheckReport

            view._report = CheckReport(self.name, len(view), -1, 0.0, self._report.nonfinite_allowed)
        return view

    def head(self, k: int) -> "Dataset":
        if k > len(self):
            raise UserError(f"dataset {self.name}: asked for {k} episodes but it has only {len(self)}")
        return self.select(np.arange(k))

    def spaced(self, k: int) -> "Dataset":
        """A view of ``k`` episodes evenly spaced over this one (every episode when ``k`` ≥ its
        length): a sample that spans recipes which record their ε values in blocks."""
        return self.select(np.unique(np.linspace(0, len(self) - 1, min(k, len(self))).round().astype(np.int64)))

    def filter(self, predicate: Callable[[Episode], bool]) -> "Dataset":
        return self.select([i for i in range(len(self)) if predicate(self.episode(i))])

    def split(self, validation_fraction: float = 0.1, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Split by episode into (train, validation); validation gets ≥ 1 episode if possible."""
        if not 0.0 <= validation_fraction < 1.0:
            raise UserError(f"validation fraction {validation_fraction} must be in [0, 1)")
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = int(round(validation_fraction * len(self)))
        if validation_fraction > 0 and len(self) >= 2:
            n_val = max(1, n_val)
        n_val = min(n_val, len(self) - 1)
        return self.select(np.sort(order[n_val:])), self.select(np.sort(order[:n_val]))

    # ---- samplers ----------------------------------------------------------------------
    def sequences(self, batch_size: int, length: int, seed: int = 0, pad: bool = False) -> "SequenceSampler":
        return SequenceSampler(self, batch_size, length, seed=seed, pad=pad)

    def transitions(self, batch_size: int, seed: int = 0) -> "TransitionSampler":
        return TransitionSampler(self, batch_size, seed=seed)

    @cached_property
    def aligned(self) -> "AlignedArrays":
        return AlignedArrays.build(self)


@dataclass
class AlignedArrays:
    """Every selected episode laid end to end, one row per observation (T+1 rows each).

    Row r of an episode holds obs[t] and, aligned with it (see ``wmil.types``), prev_action[t],
    action[t], reward[t], is_first[t], is_terminal[t], action_mask[t].
    """

    obs: Optional[np.ndarray]   # (N, *O) or None when observations are read from disk (memory_budget)
    prev_action: np.ndarray     # (N, A) float32
    action: np.ndarray          # (N, A) float32
    reward: np.ndarray          # (N,) float32
    is_first: np.ndarray        # (N,) bool
    is_terminal: np.ndarray     # (N,) bool
    action_mask: np.ndarray     # (N,) bool
    offsets: np.ndarray         # (E,) first row of each episode
    n_obs: np.ndarray           # (E,) observations per episode (T+1)

    @staticmethod
    def build(dataset: Dataset) -> "AlignedArrays":
        spec = dataset.spec
        n_obs = dataset.lengths + 1
        offsets = np.concatenate([[0], np.cumsum(n_obs)[:-1]]).astype(np.int64)
        total = int(n_obs.sum())
        in_memory = total * int(np.prod(spec.obs_shape)) * np.dtype(spec.obs_dtype).itemsize <= memory_budget()
        obs = np.empty((total, *spec.obs_shape), dtype=spec.obs_dtype) if in_memory else None
        A = spec.action_dim
        prev_action = np.zeros((total, A), np.float32)
        action = np.zeros((total, A), np.float32)
        reward = np.zeros(total, np.float32)
        is_first = np.zeros(total, bool)
        is_terminal = np.zeros(total, bool)
        action_mask = np.zeros(total, bool)
        dataset.check()  # lengths, shapes, dtypes, ranges and finiteness hold below
        from wmil.data.check import read_episode

        names = ("actions", "rewards", "terminations") + (("observations",) if obs is not None else ())
        for e, episode_id in enumerate(dataset.episode_ids):
            fields = read_episode(dataset.file, episode_id, names)
            start, n = int(offsets[e]), int(n_obs[e])
            T = n - 1
            acts = fields["actions"]
            if spec.discrete:
                acts = acts.reshape(-1).astype(np.int64)
                onehot = np.zeros((T, A), np.float32)
                onehot[np.arange(T), acts] = 1.0
                acts = onehot
            else:
                acts = acts.reshape(T, A).astype(np.float32)
            action[start:start + T] = acts
            prev_action[start + 1:start + n] = acts
            reward[start + 1:start + n] = fields["rewards"]
            is_first[start] = True
            action_mask[start:start + T] = True
            is_terminal[start + T] = bool(fields["terminations"][-1]) if T > 0 else False
            if obs is not None:
                obs[start:start + n] = fields["observations"]
        return AlignedArrays(obs, prev_action, action, reward, is_first, is_terminal, action_mask, offsets, n_obs)


class SequenceSampler:
    """Uniform windows of ``length`` observations; ``sample()`` returns a SequenceBatch.

    ``end_share``: that share of each batch (rounded) are windows that end at the last
    observation of an episode that terminated, drawn uniformly over those episodes; the rest
    are uniform. 0 (the default) draws exactly as before."""

    def __init__(self, dataset: Dataset, batch_size: int, length: int, seed: int = 0, pad: bool = False,
                 end_share: float = 0.0):
        if len(dataset) == 0:
            raise UserError(f"dataset {dataset.name}: no episodes to sample from")
        self.dataset, self.batch_size, self.length, self.pad = dataset, batch_size, length, pad
        self.arrays = dataset.aligned
        n_obs = self.arrays.n_obs
        windows = np.where(n_obs >= length, n_obs - length + 1, 1 if pad else 0)
        if windows.sum() == 0:
            raise UserError(
                f"dataset {dataset.name}: every episode is shorter than the window of {length} steps "
                f"(longest has {int(n_obs.max())} observations); use a shorter sequence length or pad=True"
            )
        self.cum_windows = np.cumsum(windows)
        self.rng = np.random.default_rng(seed)
        self.end_share = end_share
        last = self.arrays.offsets + n_obs - 1
        # Episodes whose last observation is terminal and that hold a whole window (or any, padded).
        self.ending = np.flatnonzero(self.arrays.is_terminal[last] & (windows > 0))

    def __iter__(self):
        while True:
            yield self.sample()

    def sample(self) -> SequenceBatch:
        B, T = self.batch_size, self.length
        a = self.arrays
        flat = self.rng.integers(self.cum_windows[-1], size=B)
        episode = np.searchsorted(self.cum_windows, flat, side="right")
        start = flat - np.concatenate([[0], self.cum_windows])[episode]
        n_end = int(round(B * self.end_share)) if len(self.ending) else 0
        if n_end:
            episode[:n_end] = self.rng.choice(self.ending, n_end)
            start[:n_end] = np.maximum(a.n_obs[episode[:n_end]] - T, 0)
        steps = np.arange(T)
        valid = steps[None, :] < a.n_obs[episode][:, None]                       # (B, T)
        local = np.minimum(start[:, None] + steps[None, :], a.n_obs[episode][:, None] - 1)
        rows = a.offsets[episode][:, None] + local                                  # (B, T)
        if a.obs is not None:
            obs = a.obs[rows]
        else:
            obs = self._read_pixels(episode, start, valid)
        batch = dict(obs=obs, prev_action=a.prev_action[rows], action=a.action[rows], reward=a.reward[rows],
                     is_first=a.is_first[rows], is_terminal=a.is_terminal[rows], action_mask=a.action_mask[rows])
        padded = not valid.all()
        if padded:
            for key, value in batch.items():
                value[~valid] = 0
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        return SequenceBatch(**tensors, mask=torch.from_numpy(valid) if self.pad else None)

    def _read_pixels(self, episode, start, valid) -> np.ndarray:
        ds = self.dataset
        out = np.zeros((len(episode), self.length, *ds.spec.obs_shape), ds.spec.obs_dtype)
        for b, (e, s) in enumerate(zip(episode, start)):
            n = int(valid[b].sum())
            out[b, :n] = ds.observations(e, s, s + n)
        return out


class TransitionSampler:
    """Uniform single transitions over every logged action."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0):
        if len(dataset) == 0 or dataset.total_steps == 0:
            raise UserError(f"dataset {dataset.name}: no transitions to sample from")
        self.dataset, self.batch_size = dataset, batch_size
        self.arrays = dataset.aligned
        self.rows = np.flatnonzero(self.arrays.action_mask)
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        while True:
            yield self.sample()

    def sample(self) -> TransitionBatch:
        a = self.arrays
        rows = self.rows[self.rng.integers(len(self.rows), size=self.batch_size)]
        if a.obs is not None:
            obs, next_obs = a.obs[rows], a.obs[rows + 1]
        else:
            obs, next_obs = self._read_pairs(rows)
        return TransitionBatch(
            obs=torch.from_numpy(obs), action=torch.from_numpy(a.action[rows]),
            reward=torch.from_numpy(a.reward[rows + 1]), next_obs=torch.from_numpy(next_obs),
            done=torch.from_numpy(a.is_terminal[rows + 1]),
        )

    def _read_pairs(self, rows):
        ds, a = self.dataset, self.arrays
        episode = np.searchsorted(a.offsets, rows, side="right") - 1
        out = np.zeros((2, len(rows), *ds.spec.obs_shape), ds.spec.obs_dtype)
        for b, (e, r) in enumerate(zip(episode, rows)):
            t = int(r - a.offsets[e])
            pair = ds.observations(e, t, t + 2)
            out[0, b], out[1, b] = pair[0], pair[1]
        return out[0], out[1]


def load_all(names: Sequence[str | Dataset]) -> list[Dataset]:
    """Open several datasets (names, paths or views) that share one observation/action space."""
    if not names:
        raise UserError("give at least one --dataset")
    datasets = [n if isinstance(n, Dataset) else load(n) for n in names]
    first = datasets[0]
    for other in datasets[1:]:
        if other.spec != first.spec:
            raise UserError(f"dataset {other.name} does not match {first.name}: {other.spec.describe()} vs "
                            f"{first.spec.describe()}; train one model per observation/action space")
    return datasets


class MixedSampler:
    """Sequence windows from several datasets, in proportion to their number of windows or to
    ``weights`` (one per dataset, normalised): each batch's rows are split among the datasets by
    a multinomial draw with these probabilities."""

    def __init__(self, datasets: Sequence[Dataset], batch_size: int, length: int, seed: int, pad: bool = True,
                 weights: Optional[Sequence[float]] = None, end_share: float = 0.0):
        self.samplers = [SequenceSampler(d, batch_size, length, seed=seed + 7919 * i, pad=pad, end_share=end_share)
                         for i, d in enumerate(datasets)]
        if weights is None:
            weights = [s.cum_windows[-1] for s in self.samplers]
        if len(weights) != len(self.samplers):
            raise ValueError(f"{len(weights)} weights for {len(self.samplers)} datasets")
        weights = np.asarray(weights, dtype=np.float64)
        self.weights = weights / weights.sum()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def sample(self) -> SequenceBatch:
        if len(self.samplers) == 1:
            return self.samplers[0].sample()
        counts = self.rng.multinomial(self.batch_size, self.weights)
        self.last_counts = counts  # rows per dataset in the last batch
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
