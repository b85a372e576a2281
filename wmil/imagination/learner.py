"""What the imitation learners on world-model latents have in common.

:class:`LatentLearner` (D-BC, DITTO, D-GAIL/VMIL): the expert episodes filtered once through the
model, the rows with a logged action, and the deployable policy. :class:`ImaginationLearner`
(DITTO, D-GAIL/VMIL) adds the start states, the shared actor-critic, the optional BC term, the
offline metrics and checkpoints; a learner adds its reward and its ``update``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.actor_critic import Actor, ActorCritic, ActorCriticConfig
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import action_agreement, eval_rows, latent_distance
from wmil.policy import LatentPolicy
from wmil.types import DataSpec
from wmil.world_models.base import State, check_features, feature_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class ImitationConfig(ActorCriticConfig):
    """The shared actor-critic + what an imitation learner in imagination needs besides."""

    batch_size: int = 256
    """Imagination start states (expert states) per update."""
    deter_only: bool = False
    """The reward compares (or the discriminator reads) only the deterministic part h of the latent
    (the DITTO reference code's choice)."""
    eval_starts: int = 256
    """Expert start states used for the offline metrics."""
    bc_weight: float = 0.0
    """Weight of a behaviour-cloning term −log π(a_E | z_E) on expert latents added to the actor's
    loss (0: the papers' algorithms, reward only; > 0: a regularised variant, e.g. "DITTO + BC")."""
    bc_batch_size: int = 256
    """Expert (latent, action) rows per update of the behaviour-cloning term."""


class LatentLearner:
    """Base of the learners whose actor reads world-model features (D-BC, DITTO, D-GAIL): the
    expert episodes filtered once through the model, and the deployable :class:`LatentPolicy`.
    Subclasses set ``name``, ``config_cls``, ``presets``, ``progress_keys`` and ``actor``, and
    implement ``update``; their config has a ``features`` field."""

    actor: torch.nn.Module

    def __init__(self, world_model, expert: Dataset, config, device: torch.device):
        self.world_model = world_model
        self.config = config
        self.device = device
        self.spec: DataSpec = world_model.spec
        check_features(config.features)
        self.expert = ExpertLatents.encode(world_model, expert, device, features=config.features)
        self.feature_dim = feature_size(world_model, config.features)
        #: Expert rows with a logged action (the last observation of an episode has none).
        self.action_rows = torch.nonzero(self.expert.action_mask).squeeze(-1).cpu().numpy()

    def policy(self) -> LatentPolicy:
        return LatentPolicy(self.world_model, self.actor, self.spec, self.config.features)


class ImaginationLearner(LatentLearner):
    """Base of the actor-critic imitation learners (DITTO, D-GAIL): start states, the shared
    actor-critic, offline metrics, checkpoints."""

    def __init__(self, world_model, expert: Dataset, config: ImitationConfig, device: torch.device):
        if config.bc_weight < 0:
            raise UserError(f"-o bc_weight={config.bc_weight} must be at least 0")
        super().__init__(world_model, expert, config, device)
        self.starts = self.expert.starts(config.horizon)
        self.ac = ActorCritic(self.feature_dim, self.spec, config).to(device)
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        self.eval_rows = eval_rows(self.expert, config.horizon, config.eval_starts)

    def bc_term(self) -> tuple[Optional[Tensor], dict]:
        """``bc_weight`` × the mean −log π(a_E | z_E) over a minibatch of expert rows (None when
        the weight is 0), for :meth:`ActorCritic.update`'s ``actor_extra``."""
        if self.config.bc_weight == 0:
            return None, {}
        rows = torch.as_tensor(self.rng.choice(self.action_rows, self.config.bc_batch_size),
                               device=self.expert.features.device)
        nll = -self.ac.actor.log_prob(self.expert.features[rows], self.expert.action[rows]).mean()
        return self.config.bc_weight * nll, {"loss/bc_nll": float(nll.detach())}

    @property
    def actor(self) -> Actor:  # type: ignore[override]
        return self.ac.actor

    def latent(self, states: State, features: Tensor) -> Tensor:
        """What the reward compares: the features, or with ``deter_only`` the deterministic part."""
        return states.deter if self.config.deter_only else features

    def sample_starts(self) -> tuple[State, State]:
        """``batch_size`` expert start states ``(B,)`` and the expert windows that follow ``(H+1, B)``."""
        rows = self.rng.choice(self.starts, self.config.batch_size)
        return self.expert.sample(rows, self.config.horizon)

    def evaluate(self) -> dict:
        """Offline metrics (DITTO paper, section 5): latent distance of the policy's own imagined
        rollouts from expert starts, and expert action prediction."""
        out = {"eval/latent_distance": latent_distance(self.world_model, self.ac.actor, self.expert, self.eval_rows,
                                                       self.config.horizon, features=self.config.features)}
        out.update(action_agreement(self.ac.actor, self.expert, self.spec))
        return out

    def training_state(self) -> dict:
        return {**self.ac.training_state(), "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict) -> None:
        self.ac.load_training_state(state)
        self.rng.bit_generator.state = state["rng"]

    @staticmethod
    def deployable(world_model, config: ImitationConfig, state: dict, spec: DataSpec) -> LatentPolicy:
        actor = Actor(feature_size(world_model, config.features), spec, config)
        return LatentPolicy.from_checkpoint(world_model, actor, state["modules"], spec, features=config.features)
