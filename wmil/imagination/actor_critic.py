"""The actor, the critic, the one imagination rollout, and the shared actor-critic update.

Every imagination learner (DITTO, D-GAIL/VMIL, model-based SQIL/GPRIL variants that imagine)
calls :func:`imagine` to roll the actor out in the world model's prior and, where it learns by
RL, :meth:`ActorCritic.update` with its own reward. Algorithms differ only in the reward.

Actor-critic (DITTO appendix; Dreamer): the critic regresses λ-returns bootstrapped from a
slow target critic; the actor maximises the same λ-returns — by REINFORCE with the target
critic as baseline for discrete actions, and by backpropagating through the world model
(dynamics backprop) for continuous actions — plus an entropy bonus. Returns are scaled by a
running percentile range (DreamerV3) so one entropy weight serves every reward scale.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmil.errors import UserError
from wmil.imagination.returns import ReturnNormalizer, cumulative_discount, lambda_return
from wmil.nets import MLP
from wmil.types import DataSpec
from wmil.world_models.base import State

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActorCriticConfig:
    """Actor-critic in imagination (defaults from the DITTO paper and code)."""

    horizon: int = 15
    """Imagined steps per rollout (H)."""
    gamma: float = 0.95
    """Discount γ (DITTO: 0.95)."""
    lam: float = 0.95
    """λ of the λ-returns."""
    layers: int = 2
    """Hidden layers of the actor and critic MLPs."""
    units: int = 200
    """Units per hidden layer."""
    act: str = "elu"
    """Activation of the actor and critic."""
    actor_lr: float = 8e-5
    """Adam learning rate of the actor."""
    critic_lr: float = 8e-5
    """Adam learning rate of the critic."""
    grad_clip: float = 100.0
    """Global gradient-norm clip of actor and critic."""
    entropy_discrete: float = 0.05
    """Entropy bonus weight for categorical actors (DITTO code: 0.05)."""
    entropy_continuous: float = 3e-4
    """Entropy bonus weight for tanh-Gaussian actors (their entropy is on another scale)."""
    target_every: int = 100
    """Hard copy of the critic into the target critic every this many updates (0: Polyak)."""
    target_tau: float = 0.02
    """Polyak rate when target_every is 0."""
    normalize_returns: bool = True
    """Scale advantages/returns by the running 5–95 % range of the λ-returns (never below 1)."""
    min_std: float = 0.1
    """Lower bound of the continuous actor's pre-tanh std."""
    features: str = "sample"
    """Latent features the actor, critic and reward read: 'sample' [h, z], 'mean' [h, E z], 'deter' h."""
    actor_grad: str = "auto"
    """Actor gradient: 'reinforce' (score function, critic baseline), 'dynamics' (backpropagate the
    λ-return through the world model; discrete actions pass as straight-through one-hots), 'mix'
    (``actor_grad_mix`` of REINFORCE plus the rest of dynamics), or 'auto': REINFORCE for discrete,
    dynamics for continuous actions (DreamerV2, DITTO)."""
    actor_grad_mix: float = 0.1
    """Weight ρ of the REINFORCE term when ``actor_grad='mix'`` (DreamerV2's actor_grad_mix)."""


ACTOR_GRADS = ("auto", "reinforce", "dynamics", "mix")


class Actor(nn.Module):
    """π(a | features): categorical over one-hot actions, or a tanh-squashed Gaussian scaled to
    the action bounds."""

    def __init__(self, feature_dim: int, spec: DataSpec, config: ActorCriticConfig):
        super().__init__()
        self.discrete = spec.discrete
        #: Discrete samples carry straight-through gradients (one_hot + p − sg(p)), for dynamics backprop.
        self.straight_through = False
        self.action_dim = spec.action_dim
        out = spec.action_dim if spec.discrete else 2 * spec.action_dim
        self.net = MLP(feature_dim, out, config.layers, config.units, config.act)
        self.min_std = config.min_std
        if not spec.discrete:
            low = torch.tensor(spec.action_low, dtype=torch.float32)
            high = torch.tensor(spec.action_high, dtype=torch.float32)
            self.register_buffer("center", (high + low) / 2)
            self.register_buffer("half_range", (high - low) / 2)

    def forward(self, features: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``features (..., F)`` → ``(action (..., A), log_prob (...), entropy (...))``.

        Discrete actions are one-hot samples (no gradient, for REINFORCE; with
        ``straight_through`` the gradient of the class probabilities, for dynamics backprop);
        continuous actions are reparameterised samples (gradients flow into the model). The
        continuous entropy is the single-sample estimate −log π(a), which accounts for the tanh
        squashing.
        """
        out = self.net(features)
        if self.discrete:
            logits = out
            log_probs = F.log_softmax(logits, -1)
            index = logits.argmax(-1) if deterministic else torch.distributions.Categorical(logits=logits).sample()
            action = F.one_hot(index, self.action_dim).to(features.dtype)
            if self.straight_through:
                probs = log_probs.exp()
                action = action + probs - probs.detach()
            log_prob = log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return action, log_prob, entropy
        mean, std = self._gaussian(out)
        pre = mean if deterministic else mean + std * torch.randn_like(mean)
        log_prob = self._squashed_log_prob(pre, mean, std)
        return self.center + self.half_range * torch.tanh(pre), log_prob, -log_prob

    def log_prob(self, features: Tensor, action: Tensor, eps: float = 1e-4) -> Tensor:
        """log π(action | features) of a given (e.g. expert) action: ``(..., F), (..., A) -> (...)``.

        Categorical: ``action`` one-hot (or a distribution over actions: the cross-entropy). Tanh-Gaussian: the action is mapped back
        through the affine scaling and atanh (clamped ``eps`` inside the bounds) and scored with
        the same density as :meth:`forward`.
        """
        out = self.net(features)
        if self.discrete:
            return (F.log_softmax(out, -1) * action).sum(-1)
        mean, std = self._gaussian(out)
        pre = torch.atanh(((action - self.center) / self.half_range).clamp(-1 + eps, 1 - eps))
        return self._squashed_log_prob(pre, mean, std)

    def _gaussian(self, out: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw_std = out.chunk(2, -1)
        return mean, F.softplus(raw_std) + self.min_std

    def _squashed_log_prob(self, pre: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        normal = -0.5 * ((pre - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
        # log|d tanh/dx| = log(1 - tanh²) computed stably; the affine scaling adds log half_range.
        log_det = 2 * (math.log(2) - pre - F.softplus(-2 * pre)) + self.half_range.log()
        return (normal - log_det).sum(-1)


class Critic(nn.Module):
    """v(features): expected λ-return of the actor from a latent state."""

    def __init__(self, feature_dim: int, config: ActorCriticConfig):
        super().__init__()
        self.net = MLP(feature_dim, 1, config.layers, config.units, config.act)

    def forward(self, features: Tensor) -> Tensor:  # (..., F) -> (...)
        return self.net(features).squeeze(-1)


@dataclass(frozen=True)
class Imagined:
    """An H-step rollout of the actor in the world model's prior from start states."""

    states: State        # (H+1, B)
    features: Tensor     # (H+1, B, F); differentiable w.r.t. actions for continuous actors
    actions: Tensor      # (H, B, A): action k is taken at state k
    log_prob: Tensor     # (H, B)
    entropy: Tensor      # (H, B)


def imagine(world_model, actor: Actor, start: State, horizon: int, features: str = "sample") -> Imagined:
    """Roll ``actor`` out for ``horizon`` steps from ``start (B,)`` in ``world_model``; the actor
    reads, and ``Imagined.features`` holds, ``world_model.features(state, features)``.

    The actor sees stop-gradient features (as in Dreamer); actions enter ``imagine_step`` with
    their gradients, so continuous actors learn by backpropagation through the dynamics.
    """
    state = start
    mode = features
    states, feature_list, actions, log_probs, entropies = [start], [world_model.features(start, mode)], [], [], []
    for _ in range(horizon):
        action, log_prob, entropy = actor(feature_list[-1].detach())
        state = world_model.imagine_step(state, action)
        states.append(state)
        feature_list.append(world_model.features(state, mode))
        actions.append(action)
        log_probs.append(log_prob)
        entropies.append(entropy)
    return Imagined(State.stack(states), torch.stack(feature_list), torch.stack(actions), torch.stack(log_probs),
                    torch.stack(entropies))


class ActorCritic(nn.Module):
    """Actor, critic, target critic and their optimisers; ``update`` takes the rewards."""

    def __init__(self, feature_dim: int, spec: DataSpec, config: ActorCriticConfig):
        super().__init__()
        if config.actor_grad not in ACTOR_GRADS:
            raise UserError(f"-o actor_grad={config.actor_grad!r} is not one of {list(ACTOR_GRADS)}")
        if not 0.0 <= config.actor_grad_mix <= 1.0:
            raise UserError(f"-o actor_grad_mix={config.actor_grad_mix} must be in [0, 1]")
        if config.actor_grad == "reinforce" and not spec.discrete:
            raise UserError("-o actor_grad=reinforce needs discrete actions (continuous actors learn by dynamics "
                            "backprop); use 'auto', 'dynamics' or 'mix'")
        self.config = config
        self.discrete = spec.discrete
        grad = config.actor_grad if config.actor_grad != "auto" else "reinforce" if spec.discrete else "dynamics"
        #: Weights of the REINFORCE and the dynamics-backprop terms of the policy loss.
        self.reinforce_weight = {"reinforce": 1.0, "dynamics": 0.0, "mix": config.actor_grad_mix}[grad]
        if not spec.discrete:
            self.reinforce_weight = 0.0  # no score-function term for reparameterised actors
        self.actor = Actor(feature_dim, spec, config)
        self.actor.straight_through = self.backprop and spec.discrete
        self.critic = Critic(feature_dim, config)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, eps=1e-5)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, eps=1e-5)
        self.returns = ReturnNormalizer()
        self.updates = 0

    @property
    def backprop(self) -> bool:
        """Whether the actor learns (also) by backpropagating through the model: the rewards
        passed to :meth:`update` must then keep their gradients w.r.t. the imagined features."""
        return self.reinforce_weight < 1.0

    @property
    def entropy_weight(self) -> float:
        return self.config.entropy_discrete if self.discrete else self.config.entropy_continuous

    def update(self, imagined: Imagined, reward: Tensor, discount: Optional[Tensor] = None,
               actor_extra: Optional[Tensor] = None) -> dict[str, float]:
        """One actor and one critic step. ``reward (H, B)``: reward of step k at state k (the
        last imagined state only bootstraps). When :attr:`backprop` (always for continuous
        actors) ``reward`` must keep its gradient w.r.t. ``imagined.features``.
        ``actor_extra``: a scalar loss added to the actor's (e.g. a behaviour-cloning term)."""
        cfg = self.config
        H = imagined.actions.shape[0]
        assert reward.shape == imagined.log_prob.shape, f"reward must be (H, B) = {tuple(imagined.log_prob.shape)}"
        if discount is None:
            discount = torch.full_like(reward, cfg.gamma)
        if not self.backprop:
            reward = reward.detach()  # REINFORCE: the reward is a constant for the actor
        features = imagined.features
        # Bootstrap values from the target critic; with dynamics backprop they stay differentiable
        # w.r.t. the features so the actor gradient sees the whole λ-return.
        value_input = features if self.backprop else features.detach()
        target_value = self.target_critic(value_input)                      # (H+1, B)
        returns = lambda_return(reward, target_value, discount, cfg.lam)    # (H, B)
        weight = cumulative_discount(discount)                              # (H, B)
        scale = self.returns.update(returns) if cfg.normalize_returns else 1.0

        policy_loss = torch.zeros((), device=reward.device)
        if self.reinforce_weight > 0:
            advantage = ((returns - target_value[:-1]) / scale).detach()
            policy_loss = policy_loss - self.reinforce_weight * (weight * imagined.log_prob * advantage).mean()
        if self.reinforce_weight < 1:
            policy_loss = policy_loss - (1 - self.reinforce_weight) * (weight * returns / scale).mean()
        entropy_loss = -(weight * imagined.entropy).mean()
        actor_loss = policy_loss + self.entropy_weight * entropy_loss
        if actor_extra is not None:
            actor_loss = actor_loss + actor_extra
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
        self.actor_opt.step()

        value = self.critic(features[:-1].detach())
        critic_loss = 0.5 * (weight * (value - returns.detach()) ** 2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        self._update_target()
        return {
            "loss/actor": float(actor_loss.detach()), "loss/policy": float(policy_loss.detach()),
            "loss/critic": float(critic_loss.detach()),
            "actor/entropy": float(imagined.entropy.detach().mean()), "actor/return_scale": float(scale),
            "actor/grad_norm": float(actor_norm), "critic/grad_norm": float(critic_norm),
            "critic/value": float(value.detach().mean()), "critic/lambda_return": float(returns.detach().mean()),
            "reward/mean": float(reward.detach().mean()), "imagine/horizon": float(H),
        }

    def _update_target(self) -> None:
        self.updates += 1
        cfg = self.config
        if cfg.target_every > 0:
            if self.updates % cfg.target_every == 0:
                self.target_critic.load_state_dict(self.critic.state_dict())
        else:
            with torch.no_grad():
                for target, source in zip(self.target_critic.parameters(), self.critic.parameters()):
                    target.lerp_(source, cfg.target_tau)

    def training_state(self) -> dict:
        return {"modules": self.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "returns": self.returns.state_dict(),
                "updates": self.updates}

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.returns.load_state_dict(state["returns"])
        self.updates = int(state["updates"])
