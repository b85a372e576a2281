"""The DITTO paper's offline metrics, for any actor on a latent world model (no environment).

* latent distance: roll the actor out in the model from expert start states and compare each
  imagined latent with the expert's latent at the same step, on the features the reward
  compares: mean of ``1 − r_k`` with r the DITTO similarity, over steps 1…H;
* expert action prediction: on expert latents, how often the actor's most likely action is
  the expert's (discrete), or the mean squared error of its mean action (continuous).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from wmil.imagination.actor_critic import imagine
from wmil.nets import ActionHead
from wmil.imagination.expert import ExpertLatents
from wmil.types import DataSpec

Tensor = torch.Tensor


def ditto_similarity(expert: Tensor, agent: Tensor, eps: float = 1e-8) -> Tensor:
    """``z_E·z_A / max(‖z_E‖, ‖z_A‖)²`` over the last axis: ``(..., F), (..., F) -> (...)``.

    1 when the latents are equal, 0 when orthogonal; DITTO's per-step reward.
    """
    dot = (expert * agent).sum(-1)
    norm = torch.maximum(expert.norm(dim=-1), agent.norm(dim=-1))
    return dot / (norm ** 2 + eps)


def ditto_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """:func:`ditto_similarity` of every row of ``a (M, F)`` with every row of ``b (N, F)``:
    ``(M, N)``, one matrix product instead of an ``(M, N, F)`` broadcast."""
    norm = torch.maximum(a.norm(dim=-1)[:, None], b.norm(dim=-1)[None, :])
    return (a @ b.T) / (norm ** 2 + eps)


@torch.no_grad()
def latent_distance(world_model, actor: ActionHead, expert: ExpertLatents, rows: np.ndarray, horizon: int,
                    seed: int = 0, features: str = "sample", compare: Optional[str] = None) -> float:
    """Mean ``1 − similarity`` over imagined steps 1…H of the actor (reading ``features``) against
    the expert, on the ``compare`` features (what the reward compares; ``features`` when None)."""
    cpu_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the actor samples: keep the metric repeatable and training RNG untouched
    try:
        start, target = expert.sample(rows, horizon)
        imagined = imagine(world_model, actor, start, horizon, features)
        mode = compare or features
        agent = imagined.features if mode == features else world_model.features(imagined.states, mode)
        similarity = ditto_similarity(world_model.features(target, mode), agent)
        return float(1 - similarity[1:].mean())
    finally:
        torch.set_rng_state(cpu_state)


@torch.no_grad()
def action_agreement(actor: ActionHead, expert: ExpertLatents, spec: DataSpec) -> dict:
    mask = expert.action_mask
    action, _, _ = actor(expert.features[mask], deterministic=True)
    target = expert.action[mask]
    if spec.discrete:
        return {"eval/action_accuracy": float((action.argmax(-1) == target.argmax(-1)).float().mean())}
    return {"eval/action_mse": float(((action - target) ** 2).mean())}


def eval_rows(expert: ExpertLatents, horizon: int, count: int, seed: int = 12345) -> np.ndarray:
    starts = expert.starts(horizon)
    return np.random.default_rng(seed).choice(starts, min(count, len(starts)), replace=False)
