"""One validation pass over a dataset's episodes, shared by every reader and writer.

``check_dataset`` (``wmil datasets check``) verifies every episode of a Minari dataset, and
:func:`check_episode` each episode that wmil writes (recording, import, merge, split), so what
is stored and what is trained on have passed the same rules:

* structure — the five fields exist and are arrays (not groups, not scalars);
* lengths — T actions, T+1 observations, T rewards / terminations / truncations;
* dtypes and shapes against the spaces — uint8 (C, H, W) pixels or numeric (D,) vectors,
  integer actions of a Discrete space, (T, A) numbers for a Box;
* values — observations, rewards and continuous actions finite (unless non-finite values are
  explicitly allowed) and below :data:`MAX_ABS` in magnitude, discrete actions in 0..n−1,
  continuous actions inside the Box, flags exactly 0 or 1 and set only at the last step.

The first violation is a one-line :class:`UserError` naming the dataset, the episode, the field
and the index. Pixel values need no reading (any uint8 is a valid pixel), so the check reads
only vector data; a 1M-step vector dataset is checked in about a second
(``benchmarks/dataset_check.py``), which is why it is always on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import h5py
import numpy as np

from wmil.errors import UserError
from wmil.types import DataSpec

#: Values beyond this magnitude are refused: squared and summed over a batch of thousands they
#: overflow float32 (3.4e38), so training on them can only produce inf/NaN losses.
MAX_ABS = 1e15
FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")
_NONFINITE_HINT = "clean the data, or pass --allow-nonfinite if these values are meant to be there"


@dataclass(frozen=True)
class CheckReport:
    """What a passed check covered."""

    name: str
    episodes: int
    steps: int
    seconds: float
    nonfinite_allowed: bool


def _index(mask: np.ndarray) -> str:
    position = np.argwhere(mask)[0]
    return str(int(position[0])) if len(position) == 1 else str([int(i) for i in position])


def check_episode(fields: Mapping[str, object], spec: DataSpec, where: str, allow_nonfinite: bool = False,
                  read_pixels: bool = False) -> int:
    """Check one episode's arrays (numpy arrays or h5py datasets); returns T.

    ``where`` starts every message (e.g. ``"dataset ns/x-v0: episode 3"``). Pixel observations
    are checked for shape and dtype only unless ``read_pixels``.
    """
    for name in FIELDS:
        value = fields.get(name)
        if value is None:
            raise UserError(f"{where}: field '{name}' is missing; the dataset is damaged, rebuild or re-import it")
        if isinstance(value, h5py.Group):
            raise UserError(f"{where}: field '{name}' is a group, expected an array; wmil reads Box observations "
                            "and Discrete/Box actions (the dataset is damaged or of an unsupported layout)")
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise UserError(f"{where}: field '{name}' is not an array")
        if len(value.shape) == 0:
            raise UserError(f"{where}: field '{name}' is a scalar, expected one entry per step")
    observations, actions = fields["observations"], fields["actions"]
    T = int(actions.shape[0])
    if observations.shape[0] != T + 1:
        raise UserError(f"{where}: field 'observations' has {observations.shape[0]} entries for {T} actions; "
                        "an episode has T+1 observations for T actions")
    for name in ("rewards", "terminations", "truncations"):
        if tuple(fields[name].shape) != (T,):
            raise UserError(f"{where}: field '{name}' has shape {tuple(fields[name].shape)}, expected ({T},) "
                            f"(one entry per action)")
    if tuple(observations.shape[1:]) != tuple(spec.obs_shape):
        raise UserError(f"{where}: field 'observations' has shape {tuple(observations.shape)}, expected "
                        f"({T + 1}, {', '.join(map(str, spec.obs_shape))}) from the observation space")
    if spec.pixels:
        if observations.dtype != np.uint8:
            raise UserError(f"{where}: field 'observations' has dtype {observations.dtype}; image observations must be uint8")
    elif not _numeric(observations.dtype):
        raise UserError(f"{where}: field 'observations' has dtype {observations.dtype}; expected numbers")
    if spec.discrete:
        if actions.shape not in ((T,), (T, 1)) or not np.issubdtype(actions.dtype, np.integer):
            raise UserError(f"{where}: field 'actions' has shape {tuple(actions.shape)} {actions.dtype}; a Discrete("
                            f"{spec.action_dim}) space needs ({T},) integers")
    elif tuple(actions.shape) != (T, spec.action_dim) or not _numeric(actions.dtype):
        raise UserError(f"{where}: field 'actions' has shape {tuple(actions.shape)} {actions.dtype}; a Box("
                        f"{spec.action_dim}) space needs ({T}, {spec.action_dim}) numbers")
    if not _numeric(fields["rewards"].dtype):
        raise UserError(f"{where}: field 'rewards' has dtype {fields['rewards'].dtype}; expected numbers")

    read = {name: np.asarray(fields[name][()]) for name in FIELDS[1:]}
    if not spec.pixels or read_pixels:
        read["observations"] = np.asarray(observations[()])
    for name in ("terminations", "truncations"):
        flags = read[name]
        if flags.dtype != np.bool_:
            if not _numeric(flags.dtype):
                raise UserError(f"{where}: field '{name}' has dtype {flags.dtype}; expected booleans (0/1)")
            bad = (flags != 0) & (flags != 1)
            if bad.any():
                raise UserError(f"{where}: field '{name}' index {_index(bad)} is {flags[bad][0].item()!r}; flags must be "
                                "exactly 0 or 1")
        early = flags[:-1].astype(bool)
        if early.any():
            raise UserError(f"{where}: field '{name}' is set at index {_index(early)}, before the episode's last "
                            f"step ({T - 1}); an episode ends at its first termination or truncation")
    if spec.discrete:
        values = read["actions"].reshape(-1)
        bad = (values < 0) | (values >= spec.action_dim)
        if bad.any():
            raise UserError(f"{where}: field 'actions' index {_index(bad)} is {values[bad][0]}, outside the action "
                            f"space Discrete({spec.action_dim}) (0..{spec.action_dim - 1})")
    for name in ("observations", "rewards") + (() if spec.discrete else ("actions",)):
        if name in read and not (spec.pixels and name == "observations"):
            _check_values(read[name], name, where, allow_nonfinite)
    if not spec.discrete:
        values = read["actions"]
        low, high = np.asarray(spec.action_low, np.float64), np.asarray(spec.action_high, np.float64)
        slack = 1e-6 * (1.0 + np.maximum(np.abs(low), np.abs(high)))  # float32 rounding of the bounds
        bad = (values < low - slack) | (values > high + slack)
        if bad.any():
            raise UserError(f"{where}: field 'actions' index {_index(bad)} is {values[bad][0]:.6g}, outside the "
                            f"action space [{', '.join(f'{x:g}' for x in low)}] .. [{', '.join(f'{x:g}' for x in high)}]")
    return T


def _numeric(dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_


def _check_values(values: np.ndarray, name: str, where: str, allow_nonfinite: bool) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        if np.issubdtype(values.dtype, np.integer) and values.size and np.abs(values).max() > MAX_ABS:
            bad = np.abs(values) > MAX_ABS
            raise UserError(f"{where}: field '{name}' index {_index(bad)} is {values[bad][0]}, beyond ±{MAX_ABS:g}; "
                            "rescale the data")
        return
    magnitude = np.abs(values)
    # One reduction answers the common case (all finite and small); NaN propagates through max.
    largest = magnitude.max() if values.size else 0.0
    if largest <= MAX_ABS:
        return
    finite = np.isfinite(values)
    if not finite.all() and not allow_nonfinite:
        bad = ~finite
        raise UserError(f"{where}: field '{name}' contains NaN or inf (index {_index(bad)}: {values[bad][0]}); "
                        f"{_NONFINITE_HINT}")
    huge = finite & (magnitude > MAX_ABS)
    if huge.any():
        raise UserError(f"{where}: field '{name}' index {_index(huge)} is {values[huge][0]:.4g}, beyond ±{MAX_ABS:g} "
                        "(float32 losses overflow on such values); rescale the data")


def read_episode(file: h5py.File, episode_id: int, names=FIELDS, shape_only=()) -> dict:
    """One episode's fields as numpy arrays, through h5py's low-level API (half the time of the
    high-level one, whose per-object overhead dominates on episodes of a few hundred steps).
    Fields in ``shape_only`` are returned unread (an object with ``shape`` and ``dtype``);
    ``has_infos`` tells whether the episode has an ``infos`` group.
    Raises KeyError/ValueError/OSError when the layout is not plain (a missing field, a group
    in its place): :func:`check_dataset` then reads the slow way, which names the problem."""
    group = h5py.h5g.open(file.id, f"episode_{int(episode_id)}".encode())
    out = {"has_infos": group.links.exists(b"infos")}
    for name in names:
        data = h5py.h5d.open(group, name.encode())
        if name in shape_only:
            out[name] = data
            continue
        array = np.empty(data.shape, data.dtype)
        if array.size:
            data.read(h5py.h5s.ALL, h5py.h5s.ALL, array)
        out[name] = array
    return out


def check_dataset(dataset, allow_nonfinite: bool = False) -> CheckReport:
    """Verify every selected episode of ``dataset`` (a :class:`wmil.data.Dataset`); raises a
    UserError at the first bad episode, field and index."""
    started = time.perf_counter()
    spec = dataset.spec
    file = dataset.file
    shape_only = ("observations",) if spec.pixels else ()
    steps = 0
    for episode_id in dataset.episode_ids:
        where = f"dataset {dataset.name}: episode {int(episode_id)}"
        try:
            try:
                fields = read_episode(file, episode_id, FIELDS, shape_only)
            except (KeyError, ValueError, TypeError, OSError, RuntimeError):  # not the plain layout: look closer
                group = dataset._group(episode_id)
                if not isinstance(group, h5py.Group):
                    raise UserError(f"{where}: is not an HDF5 group; the file is damaged, rebuild or re-import the "
                                    "dataset") from None
                fields = {name: group.get(name) for name in FIELDS}
                fields["has_infos"] = "infos" in group
            steps += check_episode(fields, spec, where, allow_nonfinite)
            if fields["has_infos"]:
                _check_success(dataset._group(episode_id), where)
        except UserError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:  # h5py on a damaged file
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"{where}: cannot be read ({reason}); the file is truncated or corrupted, rebuild or "
                            "re-import the dataset") from None
    return CheckReport(dataset.name, len(dataset), steps, time.perf_counter() - started, allow_nonfinite)


def _check_success(group: h5py.Group, where: str) -> None:
    infos = group.get("infos")
    if not isinstance(infos, h5py.Group) or "is_success" not in infos:
        return
    success = infos.get("is_success")
    if not isinstance(success, h5py.Dataset) or len(success.shape) == 0 or success.shape[0] == 0:
        raise UserError(f"{where}: field 'infos/is_success' is not a per-step array")
