"""SQIL: Soft Q Imitation Learning (Reddy, Dragan & Levine, ICLR 2020, "SQIL: Imitation Learning
via Reinforcement Learning with Sparse Rewards"), adapted to the offline world-model setting.

This is the real algorithm of the paper (Algorithm 1): soft Q-learning whose replay holds the
demonstrations with a constant reward r = 1 and the agent's own transitions with reward 0,
every gradient step balanced half demonstrations, half agent experience:

    L(θ) = ½ E_demo[(Q(z, a) − y_demo)²] + λ_samp · ½ E_samp[(Q(z, a) − γ V̄(z'))²]
    y_demo = r + γ V̄(z')        (r / (1 − γ) for a demonstrated transition into a terminal
                                  state: the paper's fix that stands for an absorbing state
                                  that keeps paying r; V(terminal) = 0, eq. 2)

with the soft value V(z) = α log Σ_a exp(Q(z, a)/α) (eq. 2, temperature α) and the Boltzmann
policy π(a | z) ∝ exp(Q(z, a)/α) (eq. 1); V̄ uses a Polyak-averaged target network. For
continuous actions SQIL runs on soft actor-critic (the paper's section 5.4): twin critics
Q₁, Q₂(z, a), V̄(z') = min_i Q̄_i(z', a') − α log π(a' | z') with a' ~ π(· | z'), and a
tanh-Gaussian actor (the shared :class:`~wmil.imagination.actor_critic.Actor`) minimising
E_z[α log π(a | z) − min_i Q_i(z, a)], a ~ π(· | z), on the states of both halves.

What changes offline, in a learned world model: there is no environment.

* States are the world model's latent features z (``features(state)``); the demonstrations
  are the expert episodes filtered through the posterior (:class:`ExpertLatents`): every
  logged expert step gives a transition (z_t, a_t, z_t+1).
* "Sample a rollout with the imitation policy" (Algorithm 1, line 6) is an imagined rollout
  of the current policy in the model's prior, through the one shared rollout function
  :func:`~wmil.imagination.actor_critic.imagine`. The rollouts are long (``horizon``, 50 by
  default) and start half from expert states and half from every state of the world model's
  own datasets (``starts='mixed'``): the states a drifting policy reaches, which the
  zero-reward half exists to value low. Imagined transitions never terminate (the models
  predict no termination); imagined states are clamped into the range of the data's features
  (``feature_box``), since beyond it the model extrapolates freely and Q fitted there diverged.
* Agent experience: instead of a replay buffer that grows by one rollout every k steps, every
  update imagines ``rollout_starts`` fresh H-step rollouts and uses all their transitions as
  the agent half. Imagination is cheap and needs no environment, so there is nothing to save
  by replaying; fresh rollouts keep the zero-reward half on the current policy's state
  distribution (Algorithm 1 with k = 1 and a replay of the latest rollout) and keep
  checkpoints small, so resume is exact.
* λ_samp weighs the imagined half against the demo half (each the mean over its rows): 1 with
  vector observations, discrete or continuous actions — the paper's value for Pong, Humanoid and
  HalfCheetah — and its Car Racing value 0.01 on pixels. For discrete actions on vectors the
  paper's own choice (its Lunar Lander) is 10⁻⁶; measured here it is a departure we do not make
  by default (``-o lambda_samp=1e-6`` restores it): it leaves Q fitted on the demos alone, where
  a state's other actions are never trained and Q generalises across them (CartPole, 1 demo:
  Q(z, a_E) 37.8 against 37.7 for the other action on demo states, expert action accuracy 0.50,
  score 0.00 from standard and shifted starts; LunarLander, 1 demo: accuracy 0.03, score −1.02
  standard / −0.86 shifted, below random). With λ_samp = 1 (500 updates, seeds 0–2) CartPole
  scores 0.74 ± 0.13 standard and 0.35 ± 0.13 shifted against BC's 0.51 / 0.20, LunarLander
  0.04 / 0.05 (seed 0; BC 0.48 / 0.37, a miss on that world model). The r/(1 − γ) bonus of
  section 3.3 is off ("not necessary in our experiments").
* Q must propagate: on demos Q(z, a_E) climbs towards r/(1 − γ) (100 at γ = 0.99) only as fast
  as the target network follows, so the target is Polyak-averaged at τ = 0.05 rather than
  SAC's 0.005 (time constant 1/(τ(1 − γ)) = 2,000 updates instead of 20,000); the metrics
  ``q/demo_fraction`` and ``q/samp_fraction`` give Q on demo and on imagined transitions as a
  fraction of r/(1 − γ).

The world model stays fixed. For discrete actions the deployed actor is :class:`SoftQActor`,
the Boltzmann policy of the Q-network (logits Q/α), which :class:`~wmil.policy.LatentPolicy`
runs like any actor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from wmil.algos.base import LatentLearner
from wmil.config import (CriticConfig, DiscountConfig, EntropyConfig, LatentConfig, NonNegFloat, PosInt, StartsConfig,
                         TargetConfig)
from wmil.data.dataset import Dataset
from wmil.imagination.actor_critic import imagine
from wmil.nets import MLP, ActionHead, categorical, update_target
from wmil.nets.onehot import OneHot
from wmil.types import DataSpec
from wmil.world_models.base import feature_size

Tensor = torch.Tensor


@dataclass(frozen=True)
class SqilConfig(StartsConfig, CriticConfig, EntropyConfig, TargetConfig, DiscountConfig, LatentConfig):
    """SQIL in imagination: loss ½(Q − y)² on demo (r = 1) and imagined (r = 0) transitions.
    ``batch_size`` demo transitions per update (the imagined half carries the same total
    weight); ``horizon`` is the length of each imagined rollout; the entropy weights are the
    temperatures α of the soft value (discrete) and of soft actor-critic (continuous); the
    critic block's learning rate is the Q-networks'; the actor's is the continuous actor's."""

    rollout_starts: PosInt = 64
    """Imagined rollouts of the current policy per update (the agent's zero-reward half)."""
    demo_reward: float = 1.0
    """Reward r of a demonstrated transition (the agent's own transitions get 0)."""
    terminal_bonus: bool = False
    """Demo transitions into a terminal state get r/(1−γ) instead of r (paper, section 3.3; its experiments did without)."""
    lambda_samp: Optional[NonNegFloat] = None
    """Weight λ_samp of the imagined (zero-reward) half of the loss; None: 1 on vector observations (the paper's Pong, Humanoid and HalfCheetah; its Lunar Lander's 1e-6 measured far worse here, see the module docstring), 0.01 on pixels (its Car Racing)."""

    DEFAULTS: ClassVar = dict(
        units=256,                # a soft Q-network of SAC's width
        horizon=50,               # long imagined rollouts: the drift SQIL's zero-reward half exists to value
        starts="mixed",           # ... from expert and world-data states
        gamma=0.99,               # the paper's soft Q-learning
        entropy_discrete=1.0,     # the paper's temperature α = 1 (Boltzmann policy exp(Q))
        entropy_continuous=0.1,   # soft actor-critic's α on tanh-Gaussian actions
        target_every=0, target_tau=0.05,  # Polyak target Q-networks, fast enough for Q to propagate (module docstring)
    )
    PRESETS: ClassVar = {
        "tiny": dict(batch_size=16, rollout_starts=8, horizon=4, layers=1, units=32, eval_starts=16, world_episodes=10),
        "small": dict(),
        "paper": dict(units=400, layers=3),
    }


def default_lambda_samp(spec: DataSpec) -> float:
    """λ_samp when the config leaves it unset: the SQIL paper's (appendix A.2) Car Racing value
    0.01 for discrete actions on images, else 1 (its Pong, Humanoid, HalfCheetah) — also for
    discrete actions on vectors, where the paper's Lunar Lander used 10⁻⁶ (measured worse here:
    the module docstring)."""
    return 0.01 if spec.discrete and spec.pixels else 1.0


# ------------------------------------------------------------------------- pure functions


def soft_value(q: Tensor, alpha: float) -> Tensor:
    """V(z) = α log Σ_a exp(Q(z, a)/α): ``(..., A) -> (...)`` (SQIL eq. 2 with a temperature)."""
    return alpha * torch.logsumexp(q / alpha, -1)


def sqil_targets(reward: Tensor | float, next_value: Tensor, done: Tensor, gamma: float,
                 terminal_bonus: bool = True) -> Tensor:
    """Soft Bellman targets ``(B,)``: r + γ V(z') when z' is not terminal; at a terminal z'
    V = 0, and the reward becomes r/(1−γ) with ``terminal_bonus`` (an absorbing state that
    keeps paying r, SQIL section 3.3)."""
    reward = torch.as_tensor(reward, dtype=next_value.dtype, device=next_value.device).expand_as(next_value)
    terminal_reward = reward / (1 - gamma) if terminal_bonus else reward
    return torch.where(done, terminal_reward, reward + gamma * next_value)


# ------------------------------------------------------------------------------- networks


class SoftQActor(nn.Module):
    """Q(z, ·) over discrete actions, acting as the Boltzmann policy π(a|z) ∝ exp(Q(z, a)/α).

    Its ``forward`` matches :class:`~wmil.nets.ActionHead` (one-hot action, log-prob, entropy),
    so :func:`imagine`, the offline metrics and :class:`LatentPolicy` run it like any actor.
    """

    def __init__(self, feature_dim: int, spec: DataSpec, config: SqilConfig):
        super().__init__()
        self.alpha = config.entropy_discrete
        self.q = MLP(feature_dim, spec.action_dim, config.layers, config.units, config.act)

    def q_values(self, features: Tensor) -> Tensor:  # (..., F) -> (..., A)
        return self.q(features)

    def forward(self, features: Tensor, deterministic: bool = False,
                onehot: Optional[OneHot] = None) -> tuple[Tensor, Tensor, Tensor]:
        return categorical(self.q(features, onehot) / self.alpha, deterministic)


class TwinQ(nn.Module):
    """Q₁, Q₂(z, a) for continuous actions; actions enter scaled to [−1, 1]."""

    def __init__(self, feature_dim: int, action_dim: int, config: SqilConfig):
        super().__init__()
        self.q1 = MLP(feature_dim + action_dim, 1, config.layers, config.units, config.act)
        self.q2 = MLP(feature_dim + action_dim, 1, config.layers, config.units, config.act)

    def forward(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:  # -> (...), (...)
        x = torch.cat([features, action], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


# -------------------------------------------------------------------------------- learner


class Sqil(LatentLearner):
    """SQIL trainer: demo transitions from expert latents, agent transitions from imagination."""

    name = "sqil"
    config_cls = SqilConfig
    progress_keys = ("loss/q", "q/demo_fraction", "q/demo_minus_samp")
    metric_keys = ("loss/q", "loss/q_demo", "loss/q_samp", "q/demo", "q/samp", "q/demo_fraction", "q/samp_fraction")
    evaluation_act = "sample"  # SQIL's Boltzmann policy π ∝ exp(Q/α)
    data_parallel = True  # demo rows and rollout starts come from the base's sharded samplers

    def batch_counts(self) -> dict[str, int]:
        return {"batch_size": self.config.batch_size, **self.start_counts(self.config.rollout_starts, "rollout_starts")}

    def __init__(self, world_model, expert: Dataset, config: SqilConfig, device: torch.device):
        if config.gamma >= 1.0:
            raise config.invalid("gamma", "must be below 1 (terminal targets use r/(1-gamma))")
        if min(config.entropy_discrete, config.entropy_continuous) <= 0:
            raise config.invalid("entropy_discrete" if config.entropy_discrete <= 0 else "entropy_continuous",
                                 "must be greater than 0 (it is SQIL's temperature α)")
        super().__init__(world_model, expert, config, device)
        #: Expert rows that start imagined rollouts (every expert latent; world-data states too per ``starts``).
        self.start_rows = self.expert.starts(0)
        # Imagined states are clamped into the data's feature box (LatentLearner.feature_box). It
        # is built now, not at the first rollout: encoding the world data may draw from torch's
        # generator (sampled latents), and a resumed run must draw it at the same point.
        self.box = self.feature_box()
        self.lambda_samp = default_lambda_samp(self.spec) if config.lambda_samp is None else config.lambda_samp
        #: r/(1 − γ): Q of a demonstrated state-action whose successors are all demonstrated.
        self.q_max = config.demo_reward / (1 - config.gamma)
        F_ = self.feature_dim
        if self.spec.discrete:
            self.alpha = config.entropy_discrete
            self.add_network("actor", SoftQActor(F_, self.spec, config), lr=config.critic_lr)
            self.target = self.add_network("target", copy.deepcopy(self.actor.q).requires_grad_(False))
        else:
            self.alpha = config.entropy_continuous
            self.add_network("actor", ActionHead(F_, self.spec, config), lr=config.actor_lr)
            self.critic = self.add_network("critic", TwinQ(F_, self.spec.action_dim, config), lr=config.critic_lr)
            self.target = self.add_network("target", copy.deepcopy(self.critic).requires_grad_(False))
        self.seed_rng()
        self.eval_rows = self.metric_rows()

    # ---- batches -----------------------------------------------------------------------
    def demo_batch(self, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(z (B, F), a (B, A), z' (B, F), done (B,)) demonstrated transitions."""
        rows, next_rows = self.expert.transitions(self.expert_rows(size))
        e = self.expert
        return e.features[rows], e.action[rows], e.features[next_rows], e.is_terminal[next_rows]

    @torch.no_grad()
    def imagined_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """(z, a, z') of fresh imagined rollouts of the current policy from start states (expert
        or world-data ones, per ``starts``), clamped into the data's feature box:
        ``(H·B_roll, F), (H·B_roll, A), (H·B_roll, F)``."""
        start = self.start_states(self.config.rollout_starts, self.start_rows)
        imagined = imagine(self.world_model, self.actor, start, self.config.horizon, self.config.features)
        features = imagined.features.clamp(*self.box)          # (H+1, B_roll, F) inside the data's range
        F_ = features.shape[-1]
        return (features[:-1].reshape(-1, F_), imagined.actions.reshape(-1, self.spec.action_dim),
                features[1:].reshape(-1, F_))

    # ---- update ------------------------------------------------------------------------
    def update(self, step: int) -> dict:
        cfg = self.config
        z_d, a_d, next_d, done_d = self.demo_batch(cfg.batch_size)
        z_s, a_s, next_s = self.imagined_batch()
        if self.spec.discrete:
            metrics = self._update_discrete(z_d, a_d, next_d, done_d, z_s, a_s, next_s)
            update_target(self.target, self.actor.q, step, cfg.target_every, cfg.target_tau)
        else:
            metrics = self._update_continuous(z_d, a_d, next_d, done_d, z_s, a_s, next_s)
            update_target(self.target, self.critic, step, cfg.target_every, cfg.target_tau)
        return metrics

    def _loss(self, q_d: Tensor, y_d: Tensor, q_s: Tensor, y_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        demo = 0.5 * ((q_d - y_d) ** 2).mean()
        samp = 0.5 * ((q_s - y_s) ** 2).mean()
        return demo + self.lambda_samp * samp, demo, samp

    def _update_discrete(self, z_d, a_d, next_d, done_d, z_s, a_s, next_s) -> dict:
        cfg = self.config
        with torch.no_grad():
            y_d = sqil_targets(cfg.demo_reward, soft_value(self.target(next_d), self.alpha), done_d, cfg.gamma,
                               cfg.terminal_bonus)
            y_s = sqil_targets(0.0, soft_value(self.target(next_s), self.alpha),
                               torch.zeros_like(next_s[:, 0], dtype=torch.bool), cfg.gamma)
        q_d = (self.actor.q_values(z_d) * a_d).sum(-1)
        q_s = (self.actor.q_values(z_s) * a_s).sum(-1)
        loss, demo, samp = self._loss(q_d, y_d, q_s, y_s)
        norm = self.step("actor", loss, cfg.grad_clip)
        return self._metrics(loss, demo, samp, q_d, q_s, norm)

    def _update_continuous(self, z_d, a_d, next_d, done_d, z_s, a_s, next_s) -> dict:
        cfg = self.config
        scaled = self.actor.bounds.to_unit
        with torch.no_grad():
            next_all = torch.cat([next_d, next_s])
            a_next, logp_next, _ = self.actor(next_all)
            v = torch.minimum(*self.target(next_all, scaled(a_next))) - self.alpha * logp_next
            v_d, v_s = v[:len(next_d)], v[len(next_d):]
            y_d = sqil_targets(cfg.demo_reward, v_d, done_d, cfg.gamma, cfg.terminal_bonus)
            y_s = sqil_targets(0.0, v_s, torch.zeros_like(v_s, dtype=torch.bool), cfg.gamma)
        q1_d, q2_d = self.critic(z_d, scaled(a_d))
        q1_s, q2_s = self.critic(z_s, scaled(a_s))
        loss1, demo1, samp1 = self._loss(q1_d, y_d, q1_s, y_s)
        loss2, demo2, samp2 = self._loss(q2_d, y_d, q2_s, y_s)
        loss = loss1 + loss2
        norm = self.step("critic", loss, cfg.grad_clip)

        # SAC actor step on the states of both halves, each half weighted equally.
        actor_losses = []
        for z in (z_d, z_s):
            action, logp, _ = self.actor(z)
            q = torch.minimum(*self.critic(z, scaled(action)))
            actor_losses.append((self.alpha * logp - q).mean())
        actor_loss = 0.5 * (actor_losses[0] + actor_losses[1])
        actor_norm = self.step("actor", actor_loss, cfg.grad_clip)
        self.critic.zero_grad(set_to_none=True)  # the actor loss reached the critic's parameters
        metrics = self._metrics(loss, demo1 + demo2, samp1 + samp2, q1_d, q1_s, norm)
        metrics.update({"loss/actor": float(actor_loss.detach()), "actor/grad_norm": float(actor_norm),
                        "actor/entropy": float(-logp.detach().mean())})
        return metrics

    def _metrics(self, loss, demo, samp, q_d, q_s, norm) -> dict:
        q_demo, q_samp = float(q_d.detach().mean()), float(q_s.detach().mean())
        return {"loss/q": float(loss.detach()), "loss/q_demo": float(demo.detach()), "loss/q_samp": float(samp.detach()),
                "q/demo": q_demo, "q/samp": q_samp, "q/demo_minus_samp": q_demo - q_samp,
                "q/demo_fraction": q_demo / self.q_max, "q/samp_fraction": q_samp / self.q_max,
                "q/grad_norm": float(norm)}

    # ---- evaluation and deployment -------------------------------------------------------
    @torch.no_grad()
    def q_on_demo(self) -> Tensor:
        """Q(z, ·) ``(N_demo, A)`` on every demonstrated state (discrete actions)."""
        assert self.spec.discrete, "q_on_demo is for discrete actions"
        rows = torch.as_tensor(self.action_rows, device=self.device)
        return self.actor.q_values(self.expert.features[rows])

    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config: SqilConfig) -> dict[str, nn.Module]:
        F_ = feature_size(world_model, config.features)
        return {"actor": SoftQActor(F_, spec, config) if spec.discrete else ActionHead(F_, spec, config)}


__all__ = ["SqilConfig", "Sqil", "SoftQActor", "TwinQ", "default_lambda_samp", "soft_value", "sqil_targets"]
