"""Expert demonstrations as world-model latents: start states and the expert's own future.

Each expert episode is filtered once through the world model's posterior (``observe``),
giving a latent state per observation. Imagination starts from expert states; the H expert
latents that follow a start are the targets a DITTO-style reward compares against. A start at
index t of an episode with n observations needs t + H ≤ n − 1, so windows never cross an
episode end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.types import DataSpec, SequenceBatch
from wmil.world_models.base import State

Tensor = torch.Tensor


@dataclass
class ExpertLatents:
    """Posterior latents of every expert observation, episodes laid end to end."""

    states: State          # (N,) one per expert observation
    features: Tensor       # (N, F) in the ``features`` mode the latents were encoded with
    action: Tensor         # (N, A) the expert's action at each observation (zeros at the last)
    action_mask: Tensor    # (N,) bool: a real action was taken there
    offsets: np.ndarray    # (E,) first row of each episode
    n_obs: np.ndarray      # (E,) observations per episode

    @staticmethod
    @torch.no_grad()
    def encode(world_model, dataset: Dataset, device="cpu", chunk: int = 64,
               features: str = "sample") -> "ExpertLatents":
        """Filter every episode of ``dataset`` through ``world_model`` (no gradients); ``features``
        is the mode of :meth:`WorldModel.features` stored in ``ExpertLatents.features``."""
        arrays = dataset.aligned
        spec = world_model.spec
        if dataset.spec.obs_shape != spec.obs_shape or dataset.spec.action_dim != spec.action_dim \
                or dataset.spec.discrete != spec.discrete:
            raise UserError(f"expert dataset {dataset.name} has obs {dataset.spec.obs_shape} / "
                            f"{'discrete' if dataset.spec.discrete else 'continuous'} actions ({dataset.spec.action_dim}), "
                            f"but the world model was trained on obs {spec.obs_shape} / "
                            f"{'discrete' if spec.discrete else 'continuous'} ({spec.action_dim}); use an expert "
                            "dataset of the same environment and observation settings")
        pieces: list[State] = []
        for e in range(len(arrays.n_obs)):
            start, n = int(arrays.offsets[e]), int(arrays.n_obs[e])
            rows = slice(start, start + n)
            obs = torch.from_numpy(arrays.obs[rows]) if arrays.obs is not None else _read_obs(dataset, e, n)
            batch_obs = obs.unsqueeze(0).to(device)
            prev = torch.from_numpy(arrays.prev_action[rows]).unsqueeze(0).to(device)
            first = torch.from_numpy(arrays.is_first[rows]).unsqueeze(0).to(device)
            posterior, _ = world_model.observe(batch_obs, prev, first)
            pieces.append(posterior[0])
        states = State.cat(pieces, 0)
        return ExpertLatents(states=states, features=world_model.features(states, features),
                             action=torch.from_numpy(arrays.action).to(device),
                             action_mask=torch.from_numpy(arrays.action_mask).to(device),
                             offsets=arrays.offsets.copy(), n_obs=arrays.n_obs.copy())

    def starts(self, horizon: int) -> np.ndarray:
        """Rows from which ``horizon`` expert steps follow inside the same episode."""
        valid = [np.arange(o, o + n - horizon) for o, n in zip(self.offsets, self.n_obs) if n > horizon]
        if not valid:
            raise UserError(f"every expert episode is shorter than the imagination horizon {horizon} + 1 "
                            f"(longest has {int(self.n_obs.max())} observations); lower the horizon")
        return np.concatenate(valid)

    def sample(self, rows: np.ndarray, horizon: int) -> tuple[State, State]:
        """Start states ``(B,)`` and the expert's window ``(H+1, B)`` (row k = k steps on)."""
        device = self.features.device
        index = torch.as_tensor(rows[None, :] + np.arange(horizon + 1)[:, None], device=device)
        return self.states[torch.as_tensor(rows, device=device)], self.states[index]

def check_latent_model(algo: str, world_model, expert: Dataset) -> DataSpec:
    """The world model's spec, after checking an algorithm that trains inside one got one whose
    action space matches the expert data (one-line UserErrors otherwise)."""
    if world_model is None:
        raise UserError(f"--algo {algo} trains inside a world model: pass --model RUN_DIR")
    spec: DataSpec = world_model.spec
    if expert.spec.discrete != spec.discrete:
        raise UserError(f"{algo}: the expert dataset {expert.name} has {expert.spec.describe()} but the world model "
                        f"has {spec.describe()}; use data of the same action space")
    return spec


def _read_obs(dataset: Dataset, episode: int, n: int) -> Tensor:
    group = dataset._group(dataset.episode_ids[episode])
    return torch.from_numpy(group["observations"][:n])


def expert_batch(dataset: Dataset, batch_size: int, length: int, seed: int) -> SequenceBatch:
    """A fixed batch of expert windows (for offline metrics such as action accuracy)."""
    return dataset.sequences(batch_size, length, seed=seed, pad=True).sample()
