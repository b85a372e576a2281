"""DITTO: Dream Imitation (DeMoss et al., 2023, "DITTO: Offline Imitation Learning with World Models").

The agent is unrolled for H steps in the world model from expert start states and rewarded,
at every step k, for matching the expert's own latent at the same step k of the window that
followed the start:

    r_k = z_E,k · z_A,k / max(‖z_E,k‖, ‖z_A,k‖)²       (1 when equal; "1 − latent distance")

on the model features (``features``: [h, z] with z sampled, as DreamerV2's actor reads them;
'mean': [h, E z], z's class probabilities, which are a deterministic function of the filter's
history; ``reward_features='deter'``: the deterministic part h only, as the reference code does).
The actor and critic read the same ``features``. The reward is optimised by the shared
actor-critic in imagination (:mod:`wmil.imagination.actor_critic`): λ-returns with
γ = λ = 0.95, REINFORCE for discrete actions, dynamics backprop for continuous ones
(``actor_grad='dynamics'`` backpropagates through the model for discrete actions too, with
straight-through one-hots), entropy bonus. The last imagined state only bootstraps the return
(it gets no reward). The environment is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from wmil.algos.base import ImitationConfig, ImitationLearner
from wmil.imagination.actor_critic import imagine
from wmil.imagination.metrics import ditto_similarity
from wmil.types import Imagined, State

Tensor = torch.Tensor


@dataclass(frozen=True)
class DittoConfig(ImitationConfig):
    """DITTO = the shared actor-critic + the latent-matching reward."""

    PRESETS: ClassVar = {
        "tiny": dict(batch_size=16, horizon=5, layers=1, units=32, eval_starts=16),
        "small": dict(),
        "paper": dict(batch_size=512, units=400, layers=4),
    }


class Ditto(ImitationLearner):
    """DITTO trainer: expert latents, the actor-critic, and the latent-matching reward."""

    name = "ditto"
    config_cls = DittoConfig
    progress_keys = ("reward/latent_distance", "actor/entropy")
    metric_keys = ("loss/actor", "loss/critic", "reward/latent_distance", "actor/entropy")

    def rewards(self, imagined: Imagined, target: State) -> tuple[Tensor, Tensor]:
        """(reward (H, B), similarity (H+1, B)) of an imagined rollout against the expert window."""
        agent = self.reward_latent(imagined.states, imagined.features)
        expert = self.reward_latent(target, self.world_model.features(target, self.config.features))
        similarity = ditto_similarity(expert, agent)
        return similarity[:-1], similarity

    def update(self, step: int) -> dict:
        start, target = self.sample_starts()
        imagined = imagine(self.world_model, self.actor, start, self.config.horizon, self.config.features)
        reward, similarity = self.rewards(imagined, target)
        bc, bc_metrics = self.bc_term()
        metrics = {**self.ac.update(imagined, reward, actor_extra=bc), **bc_metrics}
        metrics["reward/latent_distance"] = float(1 - similarity[1:].detach().mean())
        return metrics
