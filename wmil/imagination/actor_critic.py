"""The critic, the one imagination rollout, and the shared actor-critic update.

Every imagination learner (DITTO, D-GAIL/VMIL, SQIL, GPRIL) calls :func:`imagine` to roll its
policy (a :class:`wmil.nets.ActionHead` on world-model features) out in the world model's prior and, where it learns by
RL, :meth:`ActorCritic.update` with its own reward. Algorithms differ only in the reward.

Actor-critic (DITTO appendix; Dreamer): the critic regresses λ-returns bootstrapped from a
slow target critic; the actor maximises the same λ-returns — by REINFORCE with the target
critic as baseline for discrete actions, and by backpropagating through the world model
(dynamics backprop) for continuous actions — plus an entropy bonus.

The advantage scale and the entropy weight are one pair (``advantage_scale``): the DITTO authors
standardise the advantages of every batch and weigh the entropy by 0.05 ('batch', the default);
DreamerV3 divides them by a running 5–95 % range of the λ-returns, never below 1, and weighs the
entropy by 3e-4 ('return_range'). Mixing the two (a return-range scale with 0.05) makes a
near-uniform policy the optimum whenever the expert action's margin is small against the
entropy bonus (measured on LunarLander: actor entropy 1.24–1.36 of a possible 1.39).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import nn

from wmil.config import (ActorConfig, CriticConfig, DiscountConfig, EntropyConfig, Prob, TargetConfig)
from wmil.imagination.returns import ReturnNormalizer, cumulative_discount, lambda_return
from wmil.nets import MLP, ActionHead, adam, apply_gradients, update_target
from wmil.nets.onehot import OneHot
from wmil.nets.reuse import unchanged_weights
from wmil.precision import lowered_dtype
from wmil.types import DataSpec, Imagined, State

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActorCriticConfig(CriticConfig, EntropyConfig, TargetConfig, DiscountConfig, ActorConfig):
    """Actor-critic in imagination (defaults from the DITTO paper and code; the actor, discount,
    target, entropy and critic blocks are :mod:`wmil.config`'s)."""

    lam: Prob = 0.95
    """λ of the λ-returns."""
    advantage_scale: Literal["batch", "return_range", "none"] = "batch"
    """How the policy gradient is scaled: 'batch' standardises the advantages (and divides the backpropagated λ-returns by their std) per batch, as the DITTO authors' code (pair with entropy 0.05); 'return_range' divides by the running 5–95 % range of the λ-returns, never below 1 (DreamerV3; pair with entropy 3e-4); 'none'."""
    actor_grad: Literal["auto", "reinforce", "dynamics", "mix"] = "auto"
    """Actor gradient: 'reinforce' (score function, critic baseline), 'dynamics' (backpropagate the
    λ-return through the world model; discrete actions pass as straight-through one-hots), 'mix'
    (``actor_grad_mix`` of REINFORCE plus the rest of dynamics), or 'auto': REINFORCE for discrete,
    dynamics for continuous actions (DreamerV2, DITTO)."""
    actor_grad_mix: Prob = 0.1
    """Weight ρ of the REINFORCE term when ``actor_grad='mix'`` (DreamerV2's actor_grad_mix)."""


class Critic(nn.Module):
    """v(features): expected λ-return of the actor from a latent state (the actor's MLP sizes)."""

    def __init__(self, feature_dim: int, config: ActorConfig):
        super().__init__()
        self.net = MLP(feature_dim, 1, config.layers, config.units, config.act)

    def forward(self, features: Tensor, onehot: Optional[OneHot] = None) -> Tensor:  # (..., F) -> (...)
        return self.net(features, onehot).squeeze(-1)


def imagine(world_model, actor: ActionHead, start: State, horizon: int, features: str = "sample") -> Imagined:
    """Roll ``actor`` out for ``horizon`` steps from ``start (B,)`` in ``world_model``; the actor
    reads, and ``Imagined.features`` holds, ``world_model.features(state, features)``.

    The actor sees stop-gradient features (as in Dreamer); actions enter ``imagine_step`` with
    their gradients, so continuous actors learn by backpropagation through the dynamics. The
    returned :class:`Imagined` stacks the per-step states only when a learner reads them.

    Where the features end in one-hot samples (a categorical RSSM's z, ``features='sample'``)
    the model says so (``feature_onehot``, optional) and ``actor(features, onehot=...)`` (an
    :class:`ActionHead` or one with its signature) and the critics read them as sums of weight
    columns in their first layer (:mod:`wmil.nets.onehot`: the same function, a DITTO update
    1.25–1.46× as fast on an AVX2 CPU, ``benchmarks/results/imagination.md``).
    """
    onehot_of = getattr(world_model, "feature_onehot", lambda state, mode: None)
    first = onehot_of(start, features)
    if first is not None and start.index is None:  # read back from the start's z once, for its step too
        start = dataclasses.replace(start, index=first.index)
    state = start
    states, feature_list, onehots = [start], [world_model.features(start, features)], [first]
    actions, log_probs, entropies = [], [], []
    with unchanged_weights():  # the actor's and the model's transposes and casts made once
        for _ in range(horizon):
            action, log_prob, entropy = actor(feature_list[-1].detach(), onehot=onehots[-1])
            state = world_model.imagine_step(state, action)
            states.append(state)
            feature_list.append(world_model.features(state, features))
            onehots.append(onehot_of(state, features))
            actions.append(action)
            log_probs.append(log_prob)
            entropies.append(entropy)
    stacked = None
    if all(o is not None for o in onehots):
        stacked = OneHot(torch.stack([o.index for o in onehots]), onehots[0].width)
    return Imagined(states, torch.stack(feature_list), torch.stack(actions), torch.stack(log_probs),
                    torch.stack(entropies), stacked)


class ActorCritic:
    """Actor, critic, target critic, their optimisers and the return scale; :meth:`update`
    takes the rewards of an imagined rollout. A learner registers :meth:`networks`,
    :meth:`optimizers` and the object itself (its :meth:`state_dict`) for checkpoints."""

    def __init__(self, feature_dim: int, spec: DataSpec, config: ActorCriticConfig):
        if config.actor_grad == "reinforce" and not spec.discrete:
            raise config.invalid("actor_grad", "needs discrete actions (continuous actors learn by dynamics "
                                               "backprop); use 'auto', 'dynamics' or 'mix'")
        self.config = config
        self.discrete = spec.discrete
        grad = config.actor_grad if config.actor_grad != "auto" else "reinforce" if spec.discrete else "dynamics"
        #: Weights of the REINFORCE and the dynamics-backprop terms of the policy loss.
        self.reinforce_weight = {"reinforce": 1.0, "dynamics": 0.0, "mix": config.actor_grad_mix}[grad]
        if not spec.discrete:
            self.reinforce_weight = 0.0  # no score-function term for reparameterised actors
        self.actor = ActionHead(feature_dim, spec, config)
        self.actor.straight_through = self.backprop and spec.discrete
        self.critic = Critic(feature_dim, config)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = adam(self.actor.parameters(), lr=config.actor_lr, eps=1e-5)
        self.critic_opt = adam(self.critic.parameters(), lr=config.critic_lr, eps=1e-5)
        self.returns = ReturnNormalizer()
        self.updates = 0

    def networks(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "target_critic": self.target_critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt}

    def to(self, device) -> "ActorCritic":
        for module in self.networks().values():
            module.to(device)
        return self

    def state_dict(self) -> dict:
        """What is not a network or an optimiser: the return scale and the update count."""
        return {"returns": self.returns.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.returns.load_state_dict(state["returns"])
        self.updates = int(state["updates"])

    @property
    def backprop(self) -> bool:
        """Whether the actor learns (also) by backpropagating through the model: the rewards
        passed to :meth:`update` must then keep their gradients w.r.t. the imagined features."""
        return self.reinforce_weight < 1.0

    @property
    def entropy_weight(self) -> float:
        return self.config.entropy_discrete if self.discrete else self.config.entropy_continuous

    def update(self, imagined: Imagined, reward: Tensor, discount: Optional[Tensor] = None,
               actor_extra: Optional[Tensor] = None,
               gather: Optional[Callable[[Tensor], Tensor]] = None) -> dict[str, float]:
        """One actor and one critic step. ``reward (H, B)``: reward of step k at state k (the
        last imagined state only bootstraps). When :attr:`backprop` (always for continuous
        actors) ``reward`` must keep its gradient w.r.t. ``imagined.features``.
        ``actor_extra``: a scalar loss added to the actor's (e.g. a behaviour-cloning term).
        ``gather``: ``(H, B) -> (H, B_global)``, every process's rows of a data-parallel batch
        (:meth:`wmil.algos.base.Learner.gather`), so that the advantage standardisation and
        the return range are the global batch's statistics, as in one process (synchronised
        batch statistics); None: this process's rows are the batch."""
        gather = gather or (lambda x: x)
        cfg = self.config
        H = imagined.actions.shape[0]
        assert reward.shape == imagined.log_prob.shape, f"reward must be (H, B) = {tuple(imagined.log_prob.shape)}"
        predicted = discount is not None
        if discount is None:
            discount = torch.full_like(reward, cfg.gamma)
        if not self.backprop:
            reward = reward.detach()  # REINFORCE: the reward is a constant for the actor
        features = imagined.features
        low = lowered_dtype(features.device.type)
        if low is not None:
            # Under bf16 autocast both critics' first products would each lower the (H+1, B, F)
            # features again; lowering them once gives the same products (the two casts took ~8 ms of a
            # ~290 ms DITTO update in a one-thread bf16 profile).
            features = features.to(low)
        # Bootstrap values from the target critic; with dynamics backprop they stay differentiable
        # w.r.t. the features so the actor gradient sees the whole λ-return.
        value_input = features if self.backprop else features.detach()
        target_value = self.target_critic(value_input, imagined.onehot)     # (H+1, B)
        returns = lambda_return(reward, target_value, discount, cfg.lam)    # (H, B)
        weight = cumulative_discount(discount)                              # (H, B)
        advantage = (returns - target_value[:-1]).detach()
        if cfg.advantage_scale == "batch":
            whole = gather(advantage)
            scale = float(gather(returns.detach()).std()) + 1e-8
            advantage = (advantage - whole.mean()) / (whole.std() + 1e-8)
        else:
            scale = self.returns.update(gather(returns.detach())) if cfg.advantage_scale == "return_range" else 1.0
            advantage = advantage / scale

        policy_loss = torch.zeros((), device=reward.device)
        if self.reinforce_weight > 0:
            policy_loss = policy_loss - self.reinforce_weight * (weight * imagined.log_prob * advantage).mean()
        if self.reinforce_weight < 1:
            policy_loss = policy_loss - (1 - self.reinforce_weight) * (weight * returns / scale).mean()
        entropy_loss = -(weight * imagined.entropy).mean()
        actor_loss = policy_loss + self.entropy_weight * entropy_loss
        if actor_extra is not None:
            actor_loss = actor_loss + actor_extra
        actor_norm = apply_gradients(self.actor_opt, actor_loss, cfg.grad_clip)

        onehot = imagined.onehot[:-1] if imagined.onehot is not None else None
        value = self.critic(features[:-1].detach(), onehot)
        critic_loss = 0.5 * (weight * (value - returns.detach()) ** 2).mean()
        critic_norm = apply_gradients(self.critic_opt, critic_loss, cfg.grad_clip)
        self.updates += 1
        update_target(self.target_critic, self.critic, self.updates, cfg.target_every, cfg.target_tau)
        extra = {"imagine/continue": float(discount.mean() / cfg.gamma)} if predicted else {}
        return {**extra,
            "loss/actor": float(actor_loss.detach()), "loss/policy": float(policy_loss.detach()),
            "loss/critic": float(critic_loss.detach()),
            "actor/entropy": float(imagined.entropy.detach().mean()), "actor/return_scale": float(scale),
            "actor/grad_norm": float(actor_norm), "critic/grad_norm": float(critic_norm),
            "critic/value": float(value.detach().mean()), "critic/lambda_return": float(returns.detach().mean()),
            "reward/mean": float(reward.detach().mean()), "imagine/horizon": float(H),
        }
