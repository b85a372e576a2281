"""D-BC: behaviour cloning on world-model latents (DeMoss et al., 2023, DITTO paper, "Dream agents").

The expert episodes are filtered once through the frozen world model's posterior
(:class:`~wmil.imagination.expert.ExpertLatents`); the actor π(a | z) — the same
:class:`~wmil.imagination.actor_critic.Actor` the imagination learners use, so
:class:`~wmil.policy.LatentPolicy` deploys it by filtering real observations through the model —
is fitted by maximum likelihood of the expert's actions, with an entropy bonus that the paper
found stabilises learning (DITTO code: weight 0.1):

    min_θ  E_(z, a) ~ expert [ −log π_θ(a | z) ]  −  β · E_z [ H(π_θ(· | z)) ],   β = 0.1

over minibatches of expert rows that have a logged action (``action_mask``), with Adam.

The actor reads z = [h, E z] by default (``features='mean'``: the class probabilities of the
categorical latent, the mean of a Gaussian one), not a sample of z: the expert latents are
encoded once, so sampled one-hots are fixed noise that the actor memorises on a handful of
demos (CartPole rssm, 4 demos: training accuracy 1.00 against 0.88 on held-out expert
episodes with samples, 0.98 / 0.97 with probabilities; real return 320 / 481 / 500 over three
seeds with samples, 500 / 500 / 500 with probabilities).
Discrete actors are categorical (exact entropy); continuous actors are tanh-squashed Gaussians
scaled to the action bounds, whose likelihood of an expert action a is evaluated at
u = atanh((a − centre) / half_range), with the action clamped just inside the bounds first
(an expert action on the bound has u = ±∞), and whose entropy is the actor's single-sample
estimate −log π(ã) of a reparameterised sample ã. No imagination is needed to train;
``evaluate`` still reports DITTO's offline metrics (latent distance of imagined rollouts from
expert starts, expert action prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.actor_critic import Actor
from wmil.imagination.learner import LatentLearner
from wmil.imagination.metrics import action_agreement, eval_rows, latent_distance
from wmil.policy import LatentPolicy
from wmil.types import DataSpec
from wmil.world_models.base import feature_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class DBCConfig:
    """D-BC: maximum likelihood of expert actions on world-model latents + an entropy bonus.

    The actor fields (``layers``, ``units``, ``act``, ``min_std``) mean what they mean in
    :class:`~wmil.imagination.actor_critic.ActorCriticConfig`, so D-BC's actor has the same
    architecture as DITTO's and D-GAIL's at the same preset.
    """

    layers: int = 2
    """Hidden layers of the actor MLP."""
    units: int = 200
    """Units per hidden layer of the actor."""
    act: str = "elu"
    """Activation of the actor."""
    min_std: float = 0.1
    """Lower bound of the continuous actor's pre-tanh std."""
    features: str = "mean"
    """Latent features the actor reads: 'mean' [h, E z], 'sample' [h, z], 'deter' h (see the module docstring)."""
    lr: float = 3e-4
    """Adam learning rate."""
    batch_size: int = 256
    """Expert (latent, action) rows per minibatch."""
    entropy_weight: float = 0.1
    """Weight β of the entropy bonus (DITTO code: 0.1)."""
    grad_clip: float = 100.0
    """Global gradient-norm clip of the actor."""
    bound_eps: float = 1e-4
    """Continuous expert actions are clamped this far (in [-1, 1] units) inside the bounds before atanh."""
    horizon: int = 15
    """Imagination horizon of the latent-distance metric only (training does not imagine)."""
    eval_starts: int = 256
    """Expert start states used for the offline metrics."""


PRESETS = {
    "tiny": dict(layers=1, units=32, batch_size=32, horizon=5, eval_starts=16, lr=1e-3),
    "small": dict(),
    "paper": dict(batch_size=512, units=400, layers=4),
}


def actor_log_prob(actor: Actor, features: Tensor, action: Tensor, bound_eps: float = 1e-4) -> Tensor:
    """log π(action | features) under ``actor`` (see :meth:`Actor.log_prob`)."""
    return actor.log_prob(features, action, bound_eps)


def bc_loss(log_prob: Tensor, entropy: Tensor, entropy_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``−mean(log π(a_E | z)) − β · mean(H)`` and its named terms (``nll``, ``entropy``)."""
    nll = -log_prob.mean()
    mean_entropy = entropy.mean()
    return nll - entropy_weight * mean_entropy, {"nll": nll, "entropy": mean_entropy}


class DBC(LatentLearner):
    """D-BC trainer: expert latents and a maximum-likelihood actor on them."""

    name = "dbc"
    config_cls = DBCConfig
    presets = PRESETS
    progress_keys = ("loss/nll", "train/action_accuracy", "train/action_mse")

    def __init__(self, world_model, expert: Dataset, config: DBCConfig, device: torch.device):
        super().__init__(world_model, expert, config, device)
        if len(self.action_rows) == 0:
            raise UserError(f"expert dataset {expert.name} has no logged actions to clone")
        self.actor = Actor(self.feature_dim, self.spec, config).to(device)  # type: ignore[arg-type]
        self.opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr, eps=1e-5)
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        try:
            self.eval_rows = eval_rows(self.expert, config.horizon, config.eval_starts)
        except UserError:  # every expert episode is shorter than the metric's horizon: skip that metric
            self.eval_rows = None

    def update(self, step: int) -> dict:
        rows = torch.as_tensor(self.rng.choice(self.action_rows, self.config.batch_size), device=self.expert.features.device)
        features, action = self.expert.features[rows], self.expert.action[rows]   # (B, F), (B, A)
        log_prob = actor_log_prob(self.actor, features, action, self.config.bound_eps)  # (B,)
        _, _, entropy = self.actor(features)  # exact (categorical) or −log π(ã) of a sample (tanh-Gaussian)
        loss, terms = bc_loss(log_prob, entropy, self.config.entropy_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), self.config.grad_clip)
        self.opt.step()
        metrics = {"loss/bc": float(loss.detach()), "loss/nll": float(terms["nll"].detach()),
                   "actor/entropy": float(terms["entropy"].detach()), "actor/grad_norm": float(grad_norm)}
        with torch.no_grad():
            predicted, _, _ = self.actor(features, deterministic=True)
            if self.spec.discrete:
                metrics["train/action_accuracy"] = float((predicted.argmax(-1) == action.argmax(-1)).float().mean())
            else:
                metrics["train/action_mse"] = float(((predicted - action) ** 2).mean())
        return metrics

    def evaluate(self) -> dict:
        """Offline metrics as DITTO's: expert action prediction on every expert latent, and the
        latent distance of the actor's imagined rollouts from expert starts."""
        out = action_agreement(self.actor, self.expert, self.spec)
        if self.eval_rows is not None:
            out["eval/latent_distance"] = latent_distance(self.world_model, self.actor, self.expert, self.eval_rows,
                                                          self.config.horizon, features=self.config.features)
        return out

    def training_state(self) -> dict:
        return {"actor": self.actor.state_dict(), "opt": self.opt.state_dict(), "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]

    @staticmethod
    def deployable(world_model, config: DBCConfig, state: dict, spec: DataSpec) -> LatentPolicy:
        actor = Actor(feature_size(world_model, config.features), spec, config)  # type: ignore[arg-type]
        actor.load_state_dict(state["actor"])
        return LatentPolicy(world_model, actor.eval(), spec, config.features)
