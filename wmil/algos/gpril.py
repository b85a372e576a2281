"""GPRIL: Generative Predecessor Models for Imitation Learning (Schroecker, Vecerik & Scholz,
ICLR 2019), adapted to the offline world-model setting.

This is the real algorithm of the paper (Algorithm 1). Two conditional masked autoregressive
flows model the long-term predecessor distribution of the current policy,

    B(s, a | s̄) = B_s(s | s̄) · B_a(a | s, s̄),      s̄ = s_{t+j+1},  j ~ Geom(1 − γ)   (eq. 8–10)

trained by maximum likelihood on triples (s_t, a_t, s_{t+j+1}) of the policy's own
trajectories. The policy ascends the estimated gradient of the log state-action density of
the demonstrations (eq. 12):

    max_θ  β_π E_demo[log π_θ(ā | s̄)]  +  β_d E_{s̄ ~ demo, (s, a) ~ B(·,·|s̄)}[log π_θ(a | s)]

— behavioural cloning on the demo pairs plus cloning of predecessor pairs sampled from the
flows conditioned on demonstrated states, which teaches the policy how to reach them.

What changes offline, in a learned world model (DESIGN.md): there is no environment.

* States s are the world model's latent features z (``features(state)``; the normalised
  observation for ``dynamics``), standardised per dimension with the expert latents' mean
  and std (std floored at ``std_floor``). Demonstrations are the expert episodes filtered
  through the posterior (:class:`ExpertLatents`).
* Self-supervised roll-outs of the current policy (Algorithm 1, lines 5–7; the default,
  ``predecessors="policy"``) are imagined rollouts in the model's prior through the shared
  :func:`~wmil.imagination.actor_critic.imagine`, from start states drawn over the expert
  latents. A fresh batch is imagined every update instead of a replay buffer of recent
  rollouts: imagination is cheap, and the triples stay on the current policy (the paper's
  "short replay buffer" in its limit), with small checkpoints and exact resume. A triple
  picks t and j ~ Geom(1 − γ) with t + j + 1 ≤ H, so j is truncated to the rollout length
  (a j that does not fit is redrawn; see :func:`geometric_offsets`).
* ``predecessors="data"`` draws the triples from the offline dataset(s) the world model was
  trained on (their posterior latents and logged actions) — the predecessor model of the
  behaviour policy rather than of π_θ; cheaper and stable, but no longer on-policy.
* Flows: zuko MAFs (Papamakarios et al., 2017) with ``flow_transforms`` stacked MADEs.
  Sampling a fully autoregressive MAF takes one network pass per dimension, which is slow for
  latents of hundreds of dimensions, so the features are split into ``flow_passes``
  autoregressive blocks (0 = fully autoregressive, as in the paper). Because rssm latents
  hold one-hot codes (a degenerate density), Gaussian noise of std ``flow_noise`` (in
  standardised units) dequantises s and s̄ while the flows train. For discrete actions B_a is
  a categorical distribution (the autoregressive model of one discrete variable), for
  continuous actions a MAF over the action scaled to [−1, 1].
* A non-finite flow loss stops training through the trainer's NaN guard (the metrics
  ``loss/flow_state``, ``loss/flow_action``); non-finite samples raise a UserError at once.

The policy is the shared :class:`~wmil.imagination.actor_critic.Actor` (categorical or
tanh-Gaussian), deployed by :class:`~wmil.policy.LatentPolicy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmil.data.dataset import Dataset, load
from wmil.errors import UserError
from wmil.imagination.actor_critic import Actor, imagine
from wmil.imagination.expert import ExpertLatents, check_latent_model
from wmil.imagination.metrics import action_agreement, eval_rows, latent_distance
from wmil.nets import MLP
from wmil.policy import LatentPolicy
from wmil.types import DataSpec

Tensor = torch.Tensor


@dataclass(frozen=True)
class GprilConfig:
    """GPRIL: predecessor flows B_s(s|s̄), B_a(a|s,s̄) + the policy's β_π/β_d likelihood."""

    predecessors: str = "policy"
    """Source of the (s, a, s̄) triples: 'policy' (imagined rollouts of π, the paper) or 'data'
    (the world model's offline datasets)."""
    batch_size: int = 256
    """Triples per flow update, and demo pairs (and as many flow samples) per policy update."""
    rollout_starts: int = 64
    """Imagined rollouts of the current policy per update (predecessors='policy')."""
    horizon: int = 20
    """Steps of each imagined rollout (bounds the offset j; also the latent-distance horizon)."""
    gamma: float = 0.9
    """j ~ Geom(1 − γ): the offset between (s, a) and s̄ (paper, simulation: 0.9)."""
    beta_pi: float = 1.0
    """β_π: weight of log π(ā | s̄) on demonstrated pairs (behavioural cloning)."""
    beta_d: float = 1.0
    """β_d: weight of log π(a | s) on predecessor pairs sampled from the flows."""
    burnin: int = 0
    """Updates that train only the flows before the policy starts learning."""
    flow_transforms: int = 2
    """Stacked autoregressive transforms (MADEs) per flow (paper: 2)."""
    flow_layers: int = 2
    """Hidden layers of each MADE (paper: 2)."""
    flow_units: int = 256
    """Units per hidden layer of each MADE (paper: 500)."""
    flow_passes: int = 16
    """Autoregressive blocks of the state flow, i.e. network passes to sample it; 0 = one per
    dimension (fully autoregressive, the paper; slow to sample for large latents)."""
    flow_lr: float = 1e-4
    """Adam learning rate of both flows (paper: 1e-5 to 3e-5 over 10^6 updates)."""
    flow_weight_decay: float = 0.0
    """L2 regularisation of the flows (paper: 1e-2 / 1e-3)."""
    flow_noise: float = 0.05
    """Std of the dequantisation noise added to standardised s and s̄ while the flows train."""
    std_floor: float = 0.1
    """Lower bound of the per-dimension std used to standardise the features."""
    flow_grad_clip: float = 100.0
    """Global gradient-norm clip of the flows (paper: 100)."""
    data_episodes: int = 200
    """predecessors='data': encode at most this many episodes of each world-model dataset."""
    lr: float = 1e-4
    """Adam learning rate of the policy (paper: 1e-4)."""
    layers: int = 2
    """Hidden layers of the policy MLP (paper: 300, 200 units)."""
    units: int = 256
    """Units per hidden layer of the policy."""
    act: str = "elu"
    """Activation of the policy."""
    min_std: float = 0.05
    """Lower bound of the continuous policy's pre-tanh std (paper: σ in (0.01, 0.1))."""
    grad_clip: float = 100.0
    """Global gradient-norm clip of the policy."""
    eval_triples: int = 256
    """Held-out triples (drawn once, at the start) for the flows' log-likelihood metric."""
    eval_starts: int = 256
    """Expert start states used for the offline metrics."""


PRESETS = {
    "tiny": dict(batch_size=16, rollout_starts=8, horizon=5, gamma=0.5, flow_layers=1, flow_units=32, flow_passes=4,
                 layers=1, units=32, eval_triples=32, eval_starts=16, data_episodes=10),
    "small": dict(),
    "paper": dict(flow_units=500, flow_passes=0, flow_lr=2e-5, flow_weight_decay=1e-2, burnin=50_000,
                  rollout_starts=256),
}


# ------------------------------------------------------------------------- pure functions


def geometric_offsets(rng: np.random.Generator, offsets: np.ndarray, n_actions: np.ndarray, size: int,
                      gamma: float, max_tries: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(t_row, target_row)`` of ``size`` triples inside episodes laid end to end.

    Episode e occupies rows ``offsets[e] … offsets[e] + n_actions[e]`` (T actions, T + 1
    states). (s, a) is a uniformly drawn logged step t; the target is s̄ = s_{t+j+1} with
    j ~ Geom(1 − γ) on {0, 1, …} (P(j) = (1 − γ) γ^j), redrawn while t + j + 1 > T so the
    target stays in the episode (j is truncated to the episode: after ``max_tries`` redraws
    it is clipped to T − t − 1).
    """
    n_actions = np.asarray(n_actions, dtype=np.int64)
    weights = n_actions / n_actions.sum()
    episode = rng.choice(len(n_actions), size, p=weights)
    T = n_actions[episode]
    t = (rng.random(size) * T).astype(np.int64)
    j = _geometric(rng, size, gamma)
    for _ in range(max_tries):
        bad = t + j + 1 > T
        if not bad.any():
            break
        j[bad] = _geometric(rng, int(bad.sum()), gamma)
    j = np.minimum(j, T - t - 1)
    start = np.asarray(offsets, dtype=np.int64)[episode] + t
    return start, start + j + 1


def _geometric(rng: np.random.Generator, size: int, gamma: float) -> np.ndarray:
    if gamma <= 0:
        return np.zeros(size, np.int64)
    return rng.geometric(1.0 - gamma, size).astype(np.int64) - 1  # numpy's support is {1, 2, …}


def actor_log_prob(actor: Actor, features: Tensor, action: Tensor, eps: float = 1e-4) -> Tensor:
    """log π(action | features) of the shared Actor (see :meth:`Actor.log_prob`)."""
    return actor.log_prob(features, action, eps)


# ------------------------------------------------------------------------ the flows


class Triples(NamedTuple):
    """(s, a, s̄) with s̄ j + 1 steps after (s, a); features unstandardised."""

    state: Tensor   # (B, F)
    action: Tensor  # (B, A) one-hot or continuous
    target: Tensor  # (B, F)


class PredecessorModel(nn.Module):
    """B_s(s | s̄) · B_a(a | s, s̄) on standardised features (zuko MAFs)."""

    def __init__(self, feature_dim: int, spec: DataSpec, config: GprilConfig, mean: Tensor, std: Tensor):
        super().__init__()
        import zuko  # lazy: only GPRIL needs the flow library

        self.discrete = spec.discrete
        self.action_dim = spec.action_dim
        hidden = (config.flow_units,) * config.flow_layers
        passes = config.flow_passes if 0 < config.flow_passes < feature_dim else None
        self.state_flow = zuko.flows.MAF(feature_dim, feature_dim, transforms=config.flow_transforms,
                                         hidden_features=hidden, passes=passes)
        if spec.discrete:
            self.action_head = MLP(2 * feature_dim, spec.action_dim, config.flow_layers, config.flow_units, "relu")
        else:
            self.action_flow = zuko.flows.MAF(spec.action_dim, 2 * feature_dim, transforms=config.flow_transforms,
                                              hidden_features=hidden)
            low = torch.tensor(spec.action_low, dtype=torch.float32)
            high = torch.tensor(spec.action_high, dtype=torch.float32)
            self.register_buffer("center", (high + low) / 2)
            self.register_buffer("half_range", (high - low) / 2)
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def standardise(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std

    def log_prob(self, state: Tensor, action: Tensor, target: Tensor, noise: float = 0.0) -> tuple[Tensor, Tensor]:
        """(log B_s(s|s̄), log B_a(a|s,s̄)), each ``(B,)``, on unstandardised features; s and s̄
        get dequantisation noise of std ``noise`` (standardised units)."""
        s, s_bar = self.standardise(state), self.standardise(target)
        if noise > 0:
            s = s + noise * torch.randn_like(s)
            s_bar = s_bar + noise * torch.randn_like(s_bar)
        log_s = self.state_flow(s_bar).log_prob(s)
        context = torch.cat([s, s_bar], -1)
        if self.discrete:
            log_a = F.log_softmax(self.action_head(context), -1).gather(-1, action.argmax(-1, keepdim=True)).squeeze(-1)
        else:
            log_a = self.action_flow(context).log_prob((action - self.center) / self.half_range)
        return log_s, log_a

    @torch.no_grad()
    def sample(self, target: Tensor) -> tuple[Tensor, Tensor]:
        """(s (B, F) unstandardised, a (B, A)) ~ B(·, · | s̄) for targets ``(B, F)``."""
        s_bar = self.standardise(target)
        s = self.state_flow(s_bar).sample()
        context = torch.cat([s, s_bar], -1)
        if self.discrete:
            index = torch.distributions.Categorical(logits=self.action_head(context)).sample()
            action = F.one_hot(index, self.action_dim).to(target.dtype)
        else:
            scaled = self.action_flow(context).sample().clamp(-1.0, 1.0)
            action = self.center + self.half_range * scaled
        return s * self.std + self.mean, action


# -------------------------------------------------------------------------------- learner


def encode_world_data(world_model, max_episodes: int, device) -> ExpertLatents:
    """Posterior latents of (the first ``max_episodes`` episodes of each of) the datasets the
    world model was trained on, episodes laid end to end (``ExpertLatents`` layout)."""
    names = (getattr(world_model, "run_config", None) or {}).get("datasets")
    if not names:
        raise UserError("gpril: predecessors='data' needs the world model's training datasets, but this world "
                        "model has no run config naming them; load it from a train-model run or use "
                        "predecessors=policy")
    pieces = []
    for name in names:
        dataset = load(name)
        pieces.append(ExpertLatents.encode(world_model, dataset.head(min(max_episodes, len(dataset))), device))
    if len(pieces) == 1:
        return pieces[0]
    shift = np.cumsum([0] + [int(p.n_obs.sum()) for p in pieces[:-1]])
    from wmil.world_models.base import State

    return ExpertLatents(states=State.cat([p.states for p in pieces]), features=torch.cat([p.features for p in pieces]),
                         action=torch.cat([p.action for p in pieces]), action_mask=torch.cat([p.action_mask for p in pieces]),
                         offsets=np.concatenate([p.offsets + s for p, s in zip(pieces, shift)]),
                         n_obs=np.concatenate([p.n_obs for p in pieces]))


class Gpril:
    """GPRIL trainer: predecessor flows on (imagined or offline) triples, policy on demos + flow samples."""

    name = "gpril"
    config_cls = GprilConfig
    presets = PRESETS
    progress_keys = ("loss/flow_state", "loss/policy_demo")

    def __init__(self, world_model, expert: Dataset, config: GprilConfig, device: torch.device):
        spec = check_latent_model("gpril", world_model, expert)
        if config.predecessors not in ("policy", "data"):
            raise UserError(f"gpril: predecessors={config.predecessors!r}; choose 'policy' or 'data'")
        if not 0.0 <= config.gamma < 1.0:
            raise UserError(f"gpril: gamma={config.gamma} must be in [0, 1)")
        if config.batch_size < 1 or config.rollout_starts < 1 or config.horizon < 1:
            raise UserError("gpril: batch_size, rollout_starts and horizon must be at least 1")
        self.world_model, self.config, self.device, self.spec = world_model, config, device, spec
        self.expert = ExpertLatents.encode(world_model, expert, device)
        self.demo_rows = np.flatnonzero(self.expert.action_mask.cpu().numpy())
        if len(self.demo_rows) == 0:
            raise UserError(f"gpril: the expert dataset {expert.name} has no transitions")
        self.start_rows = self.expert.starts(0)
        self.data: Optional[ExpertLatents] = None
        if config.predecessors == "data":
            self.data = encode_world_data(world_model, config.data_episodes, device)
            if int((self.data.n_obs - 1).sum()) == 0:
                raise UserError("gpril: the world model's datasets have no transitions for predecessors='data'")
        F_ = world_model.feature_dim
        features = self.expert.features
        mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(config.std_floor)
        self.model = PredecessorModel(F_, spec, config, mean, std).to(device)
        self.flow_opt = torch.optim.Adam(self.model.parameters(), lr=config.flow_lr,
                                         weight_decay=config.flow_weight_decay)
        self.actor = Actor(F_, spec, config).to(device)  # type: ignore[arg-type]
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.lr)
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
        # Held-out triples from the initial policy (or the data), drawn with their own seeds so
        # the training random streams do not depend on them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            self.heldout = self.triples(config.eval_triples, np.random.default_rng(4321))
        self.eval_rows = eval_rows(self.expert, config.horizon, config.eval_starts)

    # ---- triples -----------------------------------------------------------------------
    @torch.no_grad()
    def triples(self, size: int, rng: Optional[np.random.Generator] = None) -> Triples:
        """``size`` triples (s_t, a_t, s_{t+j+1}) from fresh imagined rollouts of the current
        policy, or from the offline data."""
        rng = self.rng if rng is None else rng
        cfg = self.config
        if self.data is not None:
            source = self.data
            features, actions = source.features, source.action
            offsets, n_actions = source.offsets, source.n_obs - 1
        else:
            rows = rng.choice(self.start_rows, cfg.rollout_starts)
            start = self.expert.states[torch.as_tensor(rows, device=self.device)]
            imagined = imagine(self.world_model, self.actor, start, cfg.horizon)
            # Each rollout is one episode of H actions: rows b·(H+1) … b·(H+1)+H.
            features = imagined.features.transpose(0, 1).reshape(-1, imagined.features.shape[-1])
            actions = torch.cat([imagined.actions, torch.zeros_like(imagined.actions[:1])]).transpose(0, 1)
            actions = actions.reshape(-1, self.spec.action_dim)
            offsets = np.arange(cfg.rollout_starts) * (cfg.horizon + 1)
            n_actions = np.full(cfg.rollout_starts, cfg.horizon)
        at, target = geometric_offsets(rng, offsets, n_actions, size, cfg.gamma)
        at, target = torch.as_tensor(at, device=self.device), torch.as_tensor(target, device=self.device)
        return Triples(features[at], actions[at], features[target])

    # ---- update ------------------------------------------------------------------------
    def flow_loss(self, triples: Triples, noise: float) -> tuple[Tensor, Tensor]:
        log_s, log_a = self.model.log_prob(triples.state, triples.action, triples.target, noise)
        return -log_s.mean(), -log_a.mean()

    def update(self, step: int) -> dict:
        cfg = self.config
        # Predecessor models (Algorithm 1, lines 3–9).
        loss_s, loss_a = self.flow_loss(self.triples(cfg.batch_size), cfg.flow_noise)
        flow_loss = loss_s + loss_a
        metrics = {"loss/flow_state": float(loss_s.detach()), "loss/flow_action": float(loss_a.detach())}
        if not math.isfinite(metrics["loss/flow_state"]) or not math.isfinite(metrics["loss/flow_action"]):
            return metrics  # the trainer's NaN guard stops the run before anything is saved
        self.flow_opt.zero_grad(set_to_none=True)
        flow_loss.backward()
        metrics["flow/grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), cfg.flow_grad_clip))
        self.flow_opt.step()
        if step <= cfg.burnin:
            return metrics
        # Policy (lines 10–14): β_π log π(ā|s̄) on demo pairs + β_d log π(a|s), (s, a) ~ B(·|s̄).
        demo = torch.as_tensor(self.rng.choice(self.demo_rows, cfg.batch_size), device=self.device)
        targets = torch.as_tensor(self.rng.choice(self.start_rows, cfg.batch_size), device=self.device)
        state, action = self.model.sample(self.expert.features[targets])
        if not (torch.isfinite(state).all() and torch.isfinite(action).all()):
            raise UserError(f"step {step}: the predecessor flows produced non-finite samples; training stopped "
                            "(the last checkpoint is intact); lower flow_lr or raise flow_noise/std_floor")
        log_demo = actor_log_prob(self.actor, self.expert.features[demo], self.expert.action[demo]).mean()
        log_pred = actor_log_prob(self.actor, state, action).mean()
        policy_loss = -(cfg.beta_pi * log_demo + cfg.beta_d * log_pred)
        self.actor_opt.zero_grad(set_to_none=True)
        policy_loss.backward()
        metrics["actor/grad_norm"] = float(nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip))
        self.actor_opt.step()
        metrics.update({"loss/policy": float(policy_loss.detach()), "loss/policy_demo": float(-log_demo.detach()),
                        "loss/policy_predecessor": float(-log_pred.detach())})
        return metrics

    # ---- evaluation and state ----------------------------------------------------------
    @torch.no_grad()
    def heldout_log_likelihood(self) -> tuple[float, float]:
        """Mean (log B_s, log B_a) of the held-out triples, without noise."""
        log_s, log_a = self.model.log_prob(*self.heldout)
        return float(log_s.mean()), float(log_a.mean())

    def evaluate(self) -> dict:
        """Offline metrics: the flows' held-out log-likelihood, latent distance of imagined
        rollouts from expert starts, and expert action prediction."""
        log_s, log_a = self.heldout_log_likelihood()
        out = {"eval/flow_log_prob_state": log_s, "eval/flow_log_prob_action": log_a,
               "eval/latent_distance": latent_distance(self.world_model, self.actor, self.expert, self.eval_rows,
                                                       self.config.horizon)}
        out.update(action_agreement(self.actor, self.expert, self.spec))
        return out

    def training_state(self) -> dict:
        return {"modules": nn.ModuleDict({"actor": self.actor, "model": self.model}).state_dict(),
                "flow_opt": self.flow_opt.state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict) -> None:
        nn.ModuleDict({"actor": self.actor, "model": self.model}).load_state_dict(state["modules"])
        self.flow_opt.load_state_dict(state["flow_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.rng.bit_generator.state = state["rng"]

    def policy(self) -> LatentPolicy:
        return LatentPolicy(self.world_model, self.actor, self.spec)

    @staticmethod
    def deployable(world_model, config: GprilConfig, state: dict, spec: DataSpec) -> LatentPolicy:
        actor = Actor(world_model.feature_dim, spec, config)  # type: ignore[arg-type]
        return LatentPolicy.from_checkpoint(world_model, actor, state["modules"], spec)


__all__ = ["GprilConfig", "Gpril", "PredecessorModel", "Triples", "geometric_offsets", "actor_log_prob",
           "encode_world_data", "PRESETS"]
