"""Writing Minari datasets: built aside, flushed as episodes finish, moved into place.

A dataset is written with :func:`minari.create_dataset_from_buffers` into a hidden build
directory under the datasets root (same filesystem), further episodes are appended through
the Minari storage as they arrive (so memory stays bounded), and only a complete dataset is
renamed to its final place. A failure at any point removes the build directory: no
half-written dataset is ever visible to ``minari list local`` or to wmil.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import gymnasium as gym
import numpy as np

from wmil.data import names
from wmil.errors import UserError

#: Flush buffered episodes to disk once they hold this many bytes.
FLUSH_BYTES = 64 * 2**20


@dataclass
class Episode:
    """One whole episode in Minari's layout: T actions, T+1 observations."""

    observations: np.ndarray  # (T+1, *O)
    actions: np.ndarray       # (T,) int64 for Discrete, (T, A) float32 for Box
    rewards: np.ndarray       # (T,) float64
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray   # (T,) bool
    infos: dict = field(default_factory=dict)  # key -> (T+1, ...) arrays
    seed: Optional[int] = None

    def __post_init__(self):
        steps = len(self.actions)
        if len(self.observations) != steps + 1:
            raise ValueError(
                f"episode has {len(self.observations)} observations for {steps} actions; "
                "expected T+1 observations for T actions"
            )
        for key in ("rewards", "terminations", "truncations"):
            if len(getattr(self, key)) != steps:
                raise ValueError(f"episode field {key} has {len(getattr(self, key))} entries, expected {steps}")

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def nbytes(self) -> int:
        return self.observations.nbytes + self.actions.nbytes + 3 * self.length * 8

    def to_buffer(self):
        from minari.data_collector import EpisodeBuffer

        return EpisodeBuffer(
            seed=self.seed,
            observations=self.observations,
            actions=self.actions,
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terminations, dtype=bool),
            truncations=np.asarray(self.truncations, dtype=bool),
            infos=self.infos or None,
        )


@contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def check_writable(name: str, overwrite: bool) -> Path:
    """The final directory of ``name``; UserError if it exists and ``overwrite`` is False."""
    final = names.dataset_dir(name)
    if final.exists() and not overwrite:
        raise UserError(f"dataset {name!r} already exists at {final}; pass --overwrite to replace it or choose another name/version")
    return final


class DatasetWriter:
    """Write a Minari dataset episode by episode; use as a context manager.

    >>> with DatasetWriter("ns/name-v0", obs_space, act_space, overwrite=False) as w:
    ...     w.add(episode)
    ...     w.metadata["ref_min_score"] = -100.0
    The dataset appears at its final place only when the ``with`` block exits cleanly.
    """

    def __init__(self, name: str, observation_space: gym.Space, action_space: gym.Space, *,
                 env_spec=None, overwrite: bool = False, description: str = "",
                 algorithm_name: str = "wmil", author: Optional[str] = None, author_email: Optional[str] = None,
                 code_permalink: Optional[str] = None, allow_nonfinite: bool = False):
        from wmil.data.dataset import spec_from_spaces

        self.name = names.validate_name(name)
        self.final_dir = check_writable(name, overwrite)
        self.spec = spec_from_spaces(observation_space, action_space, f"dataset {name}")
        self.allow_nonfinite = allow_nonfinite
        self.observation_space = observation_space
        self.action_space = action_space
        self.env_spec = env_spec
        self.overwrite = overwrite
        self.description = description
        self.algorithm_name = algorithm_name
        # Minari shows these in `minari show`: real values or none (never placeholders).
        self.author, self.author_email, self.code_permalink = author, author_email, code_permalink
        self.metadata: dict = {}
        self.episodes = 0
        self.steps = 0
        self._pending: list[Episode] = []
        self._pending_bytes = 0
        self._storage = None
        self._build_root: Optional[Path] = None

    def __enter__(self) -> "DatasetWriter":
        root = names.datasets_root()
        root.mkdir(parents=True, exist_ok=True)
        self._build_root = Path(tempfile.mkdtemp(prefix=".wmil-build-", dir=root))
        return self

    def add(self, episode: Episode, where: Optional[str] = None) -> None:
        """Queue ``episode`` after the dataset check (``wmil.data.check``): nothing that fails it
        is ever written. ``where`` names the episode's source in an error message."""
        from wmil.data.check import FIELDS, check_episode

        check_episode({name: getattr(episode, name) for name in FIELDS}, self.spec,
                      where or f"dataset {self.name}: episode {self.episodes}", self.allow_nonfinite)
        self._pending.append(episode)
        self._pending_bytes += episode.nbytes
        self.episodes += 1
        self.steps += episode.length
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        buffers = [episode.to_buffer() for episode in self._pending]
        if self._storage is None:
            self._storage = self._create(buffers)
        else:
            self._storage.update_episodes(buffers)
        self._pending, self._pending_bytes = [], 0

    def _create(self, buffers):
        import minari

        with _minari_root(self._build_root), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about every unset optional field
            dataset = minari.create_dataset_from_buffers(
                dataset_id=self.name,
                buffer=buffers,
                env=self.env_spec,
                eval_env=self.env_spec,
                algorithm_name=self.algorithm_name,
                author=self.author,
                author_email=self.author_email,
                code_permalink=self.code_permalink,
                action_space=self.action_space,
                observation_space=self.observation_space,
                description=self.description or f"wmil dataset {self.name}",
                data_format="hdf5",
                jpeg_encoding=False,  # uint8 (C, H, W) pixels are stored raw: lossless
            )
        return dataset.storage

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.episodes == 0:
                    raise UserError(f"dataset {self.name!r}: no episodes to write (an empty dataset is not saved)")
                self.flush()
                self._storage.update_metadata(self.metadata)
                self._move_into_place()
        finally:
            if self._build_root is not None:
                shutil.rmtree(self._build_root, ignore_errors=True)

    def _move_into_place(self) -> None:
        built = self._build_root / self.name
        final = self.final_dir
        final.parent.mkdir(parents=True, exist_ok=True)
        _ensure_namespaces(self.name)
        if final.exists():
            if not self.overwrite:
                raise UserError(f"dataset {self.name!r} appeared at {final} while building; pass --overwrite to replace it")
            trash = Path(tempfile.mkdtemp(prefix=".wmil-old-", dir=names.datasets_root()))
            os.rename(final, trash / "old")
            os.rename(built, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(built, final)


def _ensure_namespaces(name: str) -> None:
    """Write Minari's namespace metadata files for every namespace level of ``name``."""
    parts = name.split("/")[:-1]
    root = names.datasets_root()
    for depth in range(1, len(parts) + 1):
        directory = root.joinpath(*parts[:depth])
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / "namespace_metadata.json"
        if not meta.exists():
            meta.write_text("{}")


def delete(name: str) -> None:
    path = names.dataset_dir(name)
    if not path.exists():
        raise UserError(f"dataset {name!r} not found in {names.datasets_root()}")
    shutil.rmtree(path)
