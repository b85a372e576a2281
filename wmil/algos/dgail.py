"""D-GAIL (DeMoss et al., 2023, DITTO paper, "Dream agents") and VMAIL / VMIL (Rafailov et al.,
2021, "Variational model-based imitation learning in high-dimensional observation spaces"):
adversarial imitation inside a learned world model.

A discriminator D_ψ on latent transitions tells expert transitions (consecutive posterior
latents of the expert episodes) from the actor's own imagined ones (``imagine()`` rollouts of
the current actor in the model's prior, started from expert states):

    min_ψ  E_E[−log D_ψ(x)] + E_π[−log(1 − D_ψ(x))] + w_gp · GP(ψ),   x = (z_t, z_{t+1})
                                                                  or x = (z_t, a_t, z_{t+1})

and the actor maximises, with the same actor-critic as DITTO (:mod:`wmil.imagination.actor_critic`),
the reward r_t = D_ψ(z_t, a_t, z_{t+1}) = sigmoid(logit): the sigmoid probability, as the
DITTO reference code and the VMIL text ("r(z_t, a_t, z_{t+1}) = D_ψ(z_t, a_t, z_{t+1})") do;
option ``reward="logd"`` gives GAIL's −log(1 − D) (= softplus(logit)) instead. (The VMIL
text's equation 2 writes the two labels the other way round; with reward = D the expert must
be labelled 1, which is what is done here.)

Which paper this is depends on the model: on ``--model rssm`` (DreamerV2, categorical latents)
with ``pair="zz"`` it is the DITTO paper's D-GAIL (its code feeds D (h_t, h_{t+1}): option
``reward_features='deter'``); on ``--model gaussian_rssm`` (diagonal Gaussian latents, Dreamer v1) with
``pair="zaz"`` it is VMIL/VMAIL, whose actor learns by backpropagating the discriminator reward
through the model (value expansion, Dreamer) for continuous actions.

Reward alignment: an H-step rollout has states 0…H and actions 0…H−1; reward k belongs to the
transition (z_k, a_k, z_{k+1}), i.e. it is earned on arriving in state k+1. That fills the
(H, B) reward of :meth:`ActorCritic.update` (``lambda_return``: G_k = r_k + γ v_{k+1} …) and
the last imagined state H is only bootstrapped by the critic.

Stabilisers. Gaussian input noise on the discriminator's inputs (VMIL: "we also add Gaussian
input noise (Müller et al., 2019) as it helps improve convergence speed and stability").
A gradient penalty: the VMIL text does not give one, but points to Discriminator-Actor-Critic
(Kostrikov et al., 2019) and to Lipschitz regularisation (Blondé et al., 2020) for stability;
the default is DAC's, the WGAN-GP penalty (Gulrajani et al., 2017) on random interpolates of
expert and imagined inputs, w·(‖∇_x̂ logit(x̂)‖ − 1)² with w = 10; ``gp_on="expert"`` gives the
zero-centred R1 penalty on expert inputs (Mescheder et al., 2018), w·‖∇_x logit(x)‖².

The discriminator is updated first, on detached imagined transitions, with its own Adam; the
reward is then computed by the updated discriminator with its parameters frozen, so the
actor's backward pass leaves no gradient in the discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmil.algos.base import ImitationConfig, ImitationLearner
from wmil.config import Activation, NonNegFloat, NonNegInt, PosFloat, PosInt, StartsConfig
from wmil.data.dataset import Dataset
from wmil.imagination.actor_critic import imagine
from wmil.nets import MLP, ActionBounds
from wmil.types import Imagined
from wmil.world_models.base import feature_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class DGailConfig(StartsConfig, ImitationConfig):
    """D-GAIL / VMAIL = the shared actor-critic + a discriminator reward on latent transitions
    (D sees H × batch_size pairs per class and update)."""

    pair: Literal["zz", "zaz"] = "zz"
    """Discriminator input: 'zz' = (z_t, z_t+1) (D-GAIL), 'zaz' = (z_t, a_t, z_t+1) (VMAIL)."""
    reward: Literal["prob", "logd"] = "prob"
    """'prob': r = D = sigmoid(logit) (DITTO code, VMIL); 'logd': r = −log(1 − D) (GAIL)."""
    disc_layers: NonNegInt = 2
    """Hidden layers of the discriminator MLP."""
    disc_units: PosInt = 200
    """Units per hidden layer of the discriminator."""
    disc_act: Activation = "elu"
    """Activation of the discriminator."""
    disc_lr: PosFloat = 3e-4
    """Adam learning rate of the discriminator (DITTO code: 3e-4 for every network)."""
    disc_updates: PosInt = 1
    """Discriminator steps per update (each on the same imagined batch, fresh expert pairs)."""
    disc_grad_clip: PosFloat = 100.0
    """Global gradient-norm clip of the discriminator."""
    gp_weight: NonNegFloat = 10.0
    """Weight of the gradient penalty (0 disables it)."""
    gp_on: Literal["interpolate", "expert"] = "interpolate"
    """'interpolate': (‖∇‖ − 1)² on expert/imagined interpolates (WGAN-GP, DAC); 'expert': ‖∇‖² (R1)."""
    input_noise: NonNegFloat = 0.1
    """Std of Gaussian noise added to the discriminator's training inputs (VMIL; 0 disables it)."""

    PRESETS: ClassVar = {
        "tiny": dict(batch_size=16, horizon=5, layers=1, units=32, disc_layers=1, disc_units=32, eval_starts=16,
                     disc_lr=1e-3),
        "small": dict(),
        "paper": dict(batch_size=512, units=400, layers=4, disc_units=400, disc_layers=4),
    }


# ------------------------------------------------------------------------------ pure functions


def discriminator_reward(logits: Tensor, kind: str = "prob") -> Tensor:
    """Reward from discriminator logits (expert = 1): ``'prob'`` → D = sigmoid(logit) ∈ (0, 1);
    ``'logd'`` → −log(1 − D) = softplus(logit) ∈ (0, ∞). Same shape as ``logits``."""
    if kind == "prob":
        return torch.sigmoid(logits)
    if kind == "logd":
        return F.softplus(logits)  # −log(1 − sigmoid(l)) = log(1 + e^l), stable for large l
    raise ValueError(f"unknown discriminator reward {kind!r}; choose 'prob' or 'logd'")


def discriminator_loss(expert_logits: Tensor, policy_logits: Tensor) -> Tensor:
    """Binary cross-entropy, expert labelled 1 and imagined 0, each class weighted equally:
    ``mean(−log D(x_E)) + mean(−log(1 − D(x_π)))``."""
    return (F.binary_cross_entropy_with_logits(expert_logits, torch.ones_like(expert_logits))
            + F.binary_cross_entropy_with_logits(policy_logits, torch.zeros_like(policy_logits)))


def gradient_penalty(discriminator: nn.Module, expert: Tensor, policy: Tensor, on: str = "interpolate",
                     mix: Optional[Tensor] = None) -> Tensor:
    """Gradient penalty on the discriminator logit, ``expert (N, X)``, ``policy (N, X)`` → scalar.

    ``'interpolate'``: mean over x̂ = ε x_E + (1 − ε) x_π, ε ~ U(0, 1) per row (or ``mix (N,)``), of
    ``(‖∇_x̂ logit(x̂)‖₂ − 1)²`` (Gulrajani et al., 2017; DAC, Kostrikov et al., 2019).
    ``'expert'``: mean over x_E of ``‖∇_x logit(x)‖₂²`` (R1, Mescheder et al., 2018).
    The graph is kept (``create_graph``) so the penalty trains the discriminator.
    """
    if on == "interpolate":
        assert expert.shape == policy.shape, f"expert {tuple(expert.shape)} vs policy {tuple(policy.shape)}"
        if mix is None:
            mix = torch.rand(expert.shape[0], device=expert.device, dtype=expert.dtype)
        points = (mix.unsqueeze(-1) * expert + (1 - mix.unsqueeze(-1)) * policy).detach().requires_grad_(True)
    elif on == "expert":
        points = expert.detach().requires_grad_(True)
    else:
        raise ValueError(f"unknown gradient penalty target {on!r}; choose 'interpolate' or 'expert'")
    logits = discriminator(points)
    (grad,) = torch.autograd.grad(logits.sum(), points, create_graph=True)
    norm2 = grad.pow(2).sum(-1)
    if on == "expert":
        return norm2.mean()
    return ((norm2 + 1e-12).sqrt() - 1).pow(2).mean()


# ------------------------------------------------------------------------------ discriminator


class Discriminator(nn.Module):
    """logit D_ψ(x) for a transition x = (z, z') or (z, a, z'): ``(..., X) → (...)``."""

    def __init__(self, input_dim: int, config: DGailConfig):
        super().__init__()
        self.net = MLP(input_dim, 1, config.disc_layers, config.disc_units, config.disc_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class DGail(ImitationLearner):
    """D-GAIL / VMAIL trainer: expert latents, the discriminator, and the shared actor-critic."""

    name = "dgail"
    config_cls = DGailConfig
    progress_keys = ("disc/accuracy", "reward/mean")
    metric_keys = ("loss/actor", "loss/critic", "loss/discriminator", "disc/accuracy", "reward/mean")

    def __init__(self, world_model, expert: Dataset, config: DGailConfig, device: torch.device):
        super().__init__(world_model, expert, config, device)
        latent_dim = feature_size(world_model, config.reward_features or config.features)
        action_dim = self.spec.action_dim if config.pair == "zaz" else 0
        self.discriminator = self.add_network("discriminator", Discriminator(2 * latent_dim + action_dim, config),
                                              lr=config.disc_lr, eps=1e-5)
        self.bounds = ActionBounds(self.spec).to(device)

    # -- discriminator inputs --------------------------------------------------------------

    def transitions(self, latent: Tensor, next_latent: Tensor, action: Tensor) -> Tensor:
        """Discriminator inputs ``(..., X)`` from ``latent (..., L)``, ``next_latent (..., L)`` and
        ``action (..., A)`` (used only for ``pair='zaz'``; continuous actions scaled to [-1, 1])."""
        if self.config.pair == "zaz":
            return torch.cat([latent, self.bounds.to_unit(action), next_latent], -1)
        return torch.cat([latent, next_latent], -1)

    def imagined_transitions(self, imagined: Imagined) -> Tensor:
        """``(H, B, X)``: transition k = (z_k, a_k, z_{k+1}); keeps gradients for dynamics backprop."""
        latent = self.imagined_latent(imagined)   # (H+1, B, L)
        return self.transitions(latent[:-1], latent[1:], imagined.actions)

    def expert_transitions(self, count: int) -> Tensor:
        """``(count, X)`` expert transitions drawn uniformly (with replacement) over all of them
        (``count`` global: this process's share in a data-parallel run)."""
        rows, next_rows = self.expert.transitions(self.expert_rows(count))
        latent = self.expert_latent
        return self.transitions(latent[rows], latent[next_rows], self.expert.action[rows])

    # -- training --------------------------------------------------------------------------

    def update_discriminator(self, policy: Tensor) -> dict:
        """One or more discriminator steps on imagined transitions ``policy (N, X)`` (detached)
        against as many expert transitions."""
        cfg = self.config
        policy = policy.detach()
        for _ in range(cfg.disc_updates):
            expert = self.expert_transitions(policy.shape[0] * self.processes)  # a global count
            if cfg.input_noise > 0:
                expert_in = expert + cfg.input_noise * torch.randn_like(expert)
                policy_in = policy + cfg.input_noise * torch.randn_like(policy)
            else:
                expert_in, policy_in = expert, policy
            expert_logits, policy_logits = self.discriminator(expert_in), self.discriminator(policy_in)
            bce = discriminator_loss(expert_logits, policy_logits)
            penalty = (gradient_penalty(self.discriminator, expert_in, policy_in, cfg.gp_on)
                       if cfg.gp_weight > 0 else torch.zeros((), device=policy.device))
            grad_norm = self.step("discriminator", bce + cfg.gp_weight * penalty, cfg.disc_grad_clip)
        with torch.no_grad():
            acc_expert = float((expert_logits > 0).float().mean())
            acc_policy = float((policy_logits < 0).float().mean())
        return {
            "loss/discriminator": float(bce.detach()), "loss/gradient_penalty": float(penalty.detach()),
            "disc/accuracy": (acc_expert + acc_policy) / 2, "disc/accuracy_expert": acc_expert,
            "disc/accuracy_imagined": acc_policy,
            "disc/expert_prob": float(torch.sigmoid(expert_logits.detach()).mean()),
            "disc/imagined_prob": float(torch.sigmoid(policy_logits.detach()).mean()),
            "disc/grad_norm": float(grad_norm),
        }

    def reward(self, transitions: Tensor) -> Tensor:
        """Reward ``(...)`` of transitions ``(..., X)`` under the current discriminator, with its
        parameters frozen: gradients reach the transitions (dynamics backprop), never ψ."""
        self.discriminator.requires_grad_(False)
        try:
            return discriminator_reward(self.discriminator(transitions), self.config.reward)
        finally:
            self.discriminator.requires_grad_(True)

    def update(self, step: int) -> dict:
        H = self.config.horizon
        start = self.start_states(self.config.batch_size, self.starts)          # this process's B rows
        imagined = imagine(self.world_model, self.actor, start, H, self.config.features)
        transitions = self.imagined_transitions(imagined)                       # (H, B, X)
        metrics = self.update_discriminator(transitions.reshape(-1, transitions.shape[-1]))
        reward = self.reward(transitions)                                        # (H, B)
        bc, bc_metrics = self.bc_term()
        metrics.update(self.ac.update(imagined, reward, self.discount(imagined), actor_extra=bc, gather=self.gather),
                       **bc_metrics)
        return metrics
