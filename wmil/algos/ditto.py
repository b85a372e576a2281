"""DITTO: Dream Imitation (DeMoss et al., 2023, "DITTO: Offline Imitation Learning with World Models").

The agent is unrolled for H steps in the world model from expert start states and rewarded,
at every step k, for matching the expert's own latent at the same step k of the window that
followed the start:

    r_k = z_E,k · z_A,k / max(‖z_E,k‖, ‖z_A,k‖)²       (1 when equal; "1 − latent distance")

on the model features (``features``: [h, z] with z sampled, as DreamerV2's actor reads them;
'mean': [h, E z], z's class probabilities, which are a deterministic function of the filter's
history; option ``deter_only``: the deterministic part h only, as the reference code does).
The actor and critic read the same ``features``. The reward is optimised by the shared actor-critic in imagination
(:mod:`wmil.imagination.actor_critic`): λ-returns with γ = λ = 0.95, REINFORCE for discrete
actions, dynamics backprop for continuous ones, entropy bonus. The last imagined state only
bootstraps the return (it gets no reward). The environment is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wmil.data.dataset import Dataset
from wmil.imagination.actor_critic import Actor, ActorCritic, ActorCriticConfig, imagine
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import action_agreement, ditto_similarity, eval_rows, latent_distance
from wmil.policy import LatentPolicy
from wmil.types import DataSpec
from wmil.world_models.base import State, check_features, feature_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class DittoConfig(ActorCriticConfig):
    """DITTO = the shared actor-critic + the latent-matching reward."""

    batch_size: int = 256
    """Imagination start states (expert states) per update."""
    deter_only: bool = False
    """Compare only the deterministic part h of the latent in the reward (the reference code's choice)."""
    eval_starts: int = 256
    """Expert start states used for the offline metrics."""


PRESETS = {
    "tiny": dict(batch_size=16, horizon=5, layers=1, units=32, eval_starts=16),
    "small": dict(),
    "paper": dict(batch_size=512, units=400, layers=4),
}


class Ditto:
    """DITTO trainer: expert latents, the actor-critic, and the latent-matching reward."""

    name = "ditto"
    config_cls = DittoConfig
    presets = PRESETS
    progress_keys = ("reward/latent_distance", "actor/entropy")

    def __init__(self, world_model, expert: Dataset, config: DittoConfig, device: torch.device):
        self.world_model = world_model
        self.config = config
        self.device = device
        self.spec: DataSpec = world_model.spec
        check_features(config.features)
        self.expert = ExpertLatents.encode(world_model, expert, device, features=config.features)
        self.starts = self.expert.starts(config.horizon)
        self.ac = ActorCritic(feature_size(world_model, config.features), self.spec, config).to(device)
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        self.eval_rows = eval_rows(self.expert, config.horizon, config.eval_starts)

    def _reward_latent(self, states: State, features: Tensor) -> Tensor:
        return states.deter if self.config.deter_only else features

    def rewards(self, imagined, target: State) -> tuple[Tensor, Tensor]:
        """(reward (H, B), similarity (H+1, B)) of an imagined rollout against the expert window."""
        agent = self._reward_latent(imagined.states, imagined.features)
        expert = self._reward_latent(target, self.world_model.features(target, self.config.features))
        similarity = ditto_similarity(expert, agent)
        return similarity[:-1], similarity

    def update(self, step: int) -> dict:
        H = self.config.horizon
        rows = self.rng.choice(self.starts, self.config.batch_size)
        start, target = self.expert.sample(rows, H)
        imagined = imagine(self.world_model, self.ac.actor, start, H, self.config.features)
        reward, similarity = self.rewards(imagined, target)
        metrics = self.ac.update(imagined, reward)
        metrics["reward/latent_distance"] = float(1 - similarity[1:].detach().mean())
        return metrics

    def evaluate(self) -> dict:
        """Offline metrics: latent distance of the policy's own imagined rollouts from expert
        starts, and expert action prediction (DITTO paper, section 5)."""
        out = {"eval/latent_distance": latent_distance(self.world_model, self.ac.actor, self.expert, self.eval_rows,
                                                       self.config.horizon, features=self.config.features)}
        out.update(action_agreement(self.ac.actor, self.expert, self.spec))
        return out

    def training_state(self) -> dict:
        return {**self.ac.training_state(), "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict) -> None:
        self.ac.load_training_state(state)
        self.rng.bit_generator.state = state["rng"]

    def policy(self) -> LatentPolicy:
        return LatentPolicy(self.world_model, self.ac.actor, self.spec, self.config.features)

    @staticmethod
    def deployable(world_model, config: DittoConfig, state: dict, spec: DataSpec) -> LatentPolicy:
        actor = Actor(feature_size(world_model, config.features), spec, config)
        return LatentPolicy.from_checkpoint(world_model, actor, state["modules"], spec, features=config.features)

