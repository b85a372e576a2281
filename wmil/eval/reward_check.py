"""The reward check of a world model: is the imitation reward's optimum the expert's behaviour?

An imitation reward computed inside a learned model is only useful where its best action is the
expert's own. From expert states (starts with a full window of H expert steps after them), each
candidate first action is imagined in the model's prior for H steps — the candidate at step 0,
then the expert's own logged actions — and scored with DITTO's return against the expert's
latents of the same window,

    R(a) = Σ_{k<H} γ^k · sim(s_{k+1}, e_{k+1}),   sim(x, y) = x·y / max(‖x‖, ‖y‖)²

on the reward's features ('deter' = h, as the DITTO authors' reward). All candidates of a start
share the same random numbers (common random numbers: the model's sampling noise is the same
for every candidate), so their returns differ only through the action. Candidates: every action
of a discrete space; for a continuous one the expert's action and ``perturbations`` actions
a_E + α·ξ·half_range, ξ ~ U[−1, 1]^A, with a coordinate that would leave the bounds perturbed the
other way (a_E − α·ξ·half_range). Clipping instead would map every outward perturbation of a
saturated expert action back onto the expert's own: a tie the expert cannot win, so with a
bang-bang expert (the Pendulum swing-up, saturated on most steps) even an exact model would fail
the check (tests/test_reward_check.py). Measured on the benchmark's Pendulum model (seed 0):
0.14 clipped, 0.18 reflected (chance 0.11; pairwise 0.63) — the rest of that miss is the
model's: a perturbation of at most 0.4 N·m on one step of 15 moves the return by about 0.1 %.

Reported (``reward_check/…``): ``accuracy`` — how often the expert's action has the highest
return (chance: 1 / number of candidates); per expert action class for discrete actions; for
continuous ones also ``pairwise`` — how often the expert's action beats one perturbed action;
``margin`` — the expert's return minus the best other candidate's, relative to the return.
A model that fails this check explains a learner that fails, before any learner is trained.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import ditto_similarity, eval_rows
from wmil.nets import ActionBounds

Tensor = torch.Tensor


def candidate_actions(expert_action: Tensor, spec, perturbations: int, alpha: float,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(candidates (C, B, A), expert_index (B,))``: every discrete action (the expert's is the
    one its one-hot marks), or the expert's continuous action (index 0) and ``perturbations``
    perturbed ones, each coordinate moved by α·ξ·half_range towards whichever side keeps it inside
    the bounds (reflected, not clipped, so no candidate equals the expert's action)."""
    B, A = expert_action.shape
    if spec.discrete:
        candidates = torch.eye(A, device=expert_action.device)[:, None, :].expand(A, B, A)
        return candidates, expert_action.argmax(-1)
    bounds = ActionBounds(spec).to(expert_action.device)
    noise = torch.rand(perturbations, B, A, generator=generator).to(expert_action.device) * 2 - 1
    step = alpha * bounds.half_range * noise
    moved = expert_action[None] + step
    outward = (moved > bounds.high) | (moved < bounds.low)
    perturbed = bounds.clip(torch.where(outward, expert_action[None] - step, moved))
    return torch.cat([expert_action[None], perturbed]), torch.zeros(B, dtype=torch.long, device=expert_action.device)


@torch.no_grad()
def window_returns(world_model, latents: ExpertLatents, rows: np.ndarray, candidates: Tensor, horizon: int,
                   gamma: float, features: str, seed: int) -> Tensor:
    """``(C, B)`` DITTO returns of each first action ``candidates (C, B, A)`` from the expert
    states ``rows``, the expert's own actions after it, with common random numbers."""
    device = latents.features.device
    start, target = latents.sample(rows, horizon)                                   # (B,), (H+1, B)
    index = torch.as_tensor(rows[None, :] + np.arange(horizon)[:, None], device=device)
    expert_actions = latents.action[index]                                          # (H, B, A)
    expert_latent = world_model.features(target, features)                          # (H+1, B, F)
    discounts = gamma ** torch.arange(horizon, dtype=torch.float32, device=device)
    returns = []
    for candidate in candidates:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same sampling noise for every candidate
            state, total = start, torch.zeros(len(rows), device=device)
            for k in range(horizon):
                state = world_model.imagine_step(state, candidate if k == 0 else expert_actions[k])
                similarity = ditto_similarity(expert_latent[k + 1], world_model.features(state, features))
                total = total + discounts[k] * similarity
        returns.append(total)
    return torch.stack(returns)


@torch.no_grad()
def candidate_returns(world_model, latents: ExpertLatents, features: str = "deter", horizon: int = 15,
                      gamma: float = 0.95, starts: int = 256, perturbations: int = 8, alpha: float = 0.2,
                      seed: int = 0) -> tuple[np.ndarray, Tensor, Tensor]:
    """``(rows (B,), returns (C, B), expert_index (B,))``: the expert start rows the check draws
    from ``latents``, every candidate's return from each, and which candidate is the expert's."""
    device = latents.features.device
    rows = eval_rows(latents, horizon, starts, seed=seed + 12345)
    generator = torch.Generator().manual_seed(seed)
    candidates, expert_index = candidate_actions(latents.action[torch.as_tensor(rows, device=device)],
                                                 world_model.spec, perturbations, alpha, generator)
    returns = window_returns(world_model, latents, rows, candidates, horizon, gamma, features, seed)   # (C, B)
    return rows, returns, expert_index


def expert_and_best_other(returns: Tensor, expert_index: Tensor) -> tuple[Tensor, Tensor]:
    """``(expert_return (B,), best_other (B,))``: the expert's candidate's return at each start
    and the best return of the other candidates (the expert wins where the first is larger)."""
    columns = torch.arange(returns.shape[1], device=returns.device)
    others = returns.clone()
    others[expert_index, columns] = -torch.inf
    return returns[expert_index, columns], others.max(0).values


@torch.no_grad()
def reward_check(world_model, expert: Dataset, features: str = "deter", horizon: int = 15, gamma: float = 0.95,
                 starts: int = 256, perturbations: int = 8, alpha: float = 0.2, seed: int = 0,
                 device: Optional[torch.device] = None) -> dict[str, float]:
    """The reward check on ``starts`` expert states of ``expert`` (see the module docstring)."""
    device = device or next(iter(world_model.parameters()), torch.empty(0)).device
    spec = world_model.spec
    if expert.spec.discrete != spec.discrete or expert.spec.action_dim != spec.action_dim:
        raise UserError(f"reward check: the expert dataset {expert.name} has {expert.spec.describe()} but the world "
                        f"model has {spec.describe()}")
    latents = ExpertLatents.encode(world_model, expert, device)
    rows, returns, expert_index = candidate_returns(world_model, latents, features, horizon, gamma, starts,
                                                    perturbations, alpha, seed)
    expert_return, best_other = expert_and_best_other(returns, expert_index)
    wins = expert_return > best_other
    out = {"reward_check/accuracy": float(wins.float().mean()),
           "reward_check/chance": 1.0 / returns.shape[0],
           "reward_check/margin": float(((expert_return - best_other) / expert_return.abs().clamp_min(1e-8)).mean()),
           "reward_check/starts": float(len(rows))}
    if spec.discrete:
        for c in range(spec.action_dim):
            of_class = expert_index == c
            if of_class.any():
                out[f"reward_check/accuracy_action{c}"] = float(wins[of_class].float().mean())
                out[f"reward_check/share_action{c}"] = float(of_class.float().mean())
    else:
        out["reward_check/pairwise"] = float((expert_return[None] > returns[1:]).float().mean())
    return out
