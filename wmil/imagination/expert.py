"""Expert demonstrations as world-model latents: start states and the expert's own future.

Each expert episode is filtered once through the world model's posterior (``observe``),
giving a latent state per observation. Imagination starts from expert states; the H expert
latents that follow a start are the targets a DITTO-style reward compares against. A start at
index t of an episode with n observations needs t + H ≤ n − 1, so windows never cross an
episode end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.types import State

Tensor = torch.Tensor


@dataclass
class ExpertLatents:
    """Posterior latents of every expert observation, episodes laid end to end."""

    states: State          # (N,) one per expert observation
    features: Tensor       # (N, F) in the ``features`` mode the latents were encoded with
    action: Tensor         # (N, A) the expert's action at each observation (zeros at the last)
    action_mask: Tensor    # (N,) bool: a real action was taken there
    is_terminal: Tensor    # (N,) bool: the observation is terminal (the episode ended there)
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
            obs = torch.from_numpy(arrays.obs[rows] if arrays.obs is not None else dataset.observations(e, 0, n))
            batch_obs = obs.unsqueeze(0).to(device)
            prev = torch.from_numpy(arrays.prev_action[rows]).unsqueeze(0).to(device)
            first = torch.from_numpy(arrays.is_first[rows]).unsqueeze(0).to(device)
            posterior, _ = world_model.observe(batch_obs, prev, first)
            pieces.append(posterior[0])
        states = State.cat(pieces, 0)
        return ExpertLatents(states=states, features=world_model.features(states, features),
                             action=torch.from_numpy(arrays.action).to(device),
                             action_mask=torch.from_numpy(arrays.action_mask).to(device),
                             is_terminal=torch.from_numpy(arrays.is_terminal).to(device),
                             offsets=arrays.offsets.copy(), n_obs=arrays.n_obs.copy())

    @staticmethod
    @torch.no_grad()
    def of_world_model(world_model, max_episodes: int, device="cpu", features: str = "sample") -> "ExpertLatents":
        """Posterior latents of (``max_episodes`` episodes, evenly spaced, of each of) the datasets
        the world model was trained on (its run config names them), laid end to end.

        Evenly spaced rather than the first ones: the recipes record their ε values in blocks
        (``epsilon: [0, 0.25, 0.5, 1]`` is the expert's 250 episodes, then ε = 0.25's, …), so the
        first 200 of 1,000 MinAtar episodes, or of 400 LunarLander ones, were the expert's own
        play only, and "world-data states" held none of the drift they are meant to show."""
        from wmil.data.dataset import load

        names = (getattr(world_model, "run_config", None) or {}).get("datasets")
        if not names:
            raise UserError("world-data states need the world model's training datasets, but this world model has no "
                            "run config naming them; load it from a train-model run (wmil.load_world_model) or "
                            "give -o starts=expert to start from the demos only")
        parts = []
        for name in names:
            try:
                dataset = load(name)
            except UserError as error:
                raise UserError(f"{error} (world-data starts, starts='world' or 'mixed', encode the world model's "
                                f"training datasets; give -o starts=expert to start from the demos only)") from None
            parts.append(ExpertLatents.encode(world_model, dataset.spaced(max_episodes), device, features=features))
        return ExpertLatents.concat(parts)

    @staticmethod
    def concat(parts: list["ExpertLatents"]) -> "ExpertLatents":
        """Several encodings laid end to end (episode offsets shifted accordingly)."""
        if len(parts) == 1:
            return parts[0]
        shift = np.cumsum([0] + [int(p.n_obs.sum()) for p in parts[:-1]])
        return ExpertLatents(states=State.cat([p.states for p in parts]),
                             features=torch.cat([p.features for p in parts]),
                             action=torch.cat([p.action for p in parts]),
                             action_mask=torch.cat([p.action_mask for p in parts]),
                             is_terminal=torch.cat([p.is_terminal for p in parts]),
                             offsets=np.concatenate([p.offsets + s for p, s in zip(parts, shift)]),
                             n_obs=np.concatenate([p.n_obs for p in parts]))

    def starts(self, horizon: int, first: Optional[int] = None) -> np.ndarray:
        """Rows from which ``horizon`` expert steps follow inside the same episode (with ``first``:
        only the first ``first`` of them in each episode)."""
        valid = [np.arange(o, o + (n - horizon if first is None else min(first, n - horizon)))
                 for o, n in zip(self.offsets, self.n_obs) if n > horizon]
        if not valid:
            raise UserError(f"every expert episode is shorter than the imagination horizon {horizon} + 1 "
                            f"(longest has {int(self.n_obs.max())} observations); lower the horizon")
        return np.concatenate(valid)

    def window(self, rows: np.ndarray, horizon: int) -> Tensor:
        """Row indices ``(H+1, B)`` of the expert's windows from start rows ``rows (B,)`` (row k
        of the window: k steps on; the rows come from :meth:`starts`)."""
        return torch.as_tensor(rows[None, :] + np.arange(horizon + 1)[:, None], device=self.features.device)

    def sample(self, rows: np.ndarray, horizon: int) -> tuple[State, State]:
        """Start states ``(B,)`` and the expert's window ``(H+1, B)`` (row k = k steps on)."""
        index = self.window(rows, horizon)
        return self.states[index[0]], self.states[index]

    @property
    def action_rows(self) -> np.ndarray:
        """Rows with a logged action: every observation but each episode's last. Each is the
        first row of a transition (see :meth:`transitions`)."""
        return np.flatnonzero(self.action_mask.cpu().numpy())

    def rows_of(self, episodes) -> np.ndarray:
        """Rows holding a logged action in the episodes at positions ``episodes``."""
        rows = [np.arange(self.offsets[e], self.offsets[e] + self.n_obs[e]) for e in episodes]
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return rows[self.action_mask.cpu().numpy()[rows]]

    def transitions(self, rows: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """``(rows, next_rows)`` as index tensors: the expert's transition from row t (one of
        :attr:`action_rows`) arrives at row t + 1 of the same episode (the time alignment of
        :mod:`wmil.types`), so (features[t], action[t], features[t + 1]) is one logged step."""
        rows = torch.as_tensor(rows, device=self.features.device)
        return rows, rows + 1
