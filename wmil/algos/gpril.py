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

What changes offline, in a learned world model: there is no environment.

* States s are the world model's latent features z (``features(state)``; the normalised
  observation for ``dynamics``), standardised per dimension with the expert latents' mean
  and std (std floored at ``std_floor``). Demonstrations are the expert episodes filtered
  through the posterior (:class:`ExpertLatents`).
* Self-supervised roll-outs of the current policy (Algorithm 1, lines 5–7; the default,
  ``predecessors="policy"``) are imagined rollouts in the model's prior through the shared
  :func:`~wmil.imagination.actor_critic.imagine`, from start states drawn over the expert
  latents (and world-data states, per ``starts``). A fresh batch is imagined every update
  instead of a replay buffer of recent rollouts: imagination is cheap, and the triples stay on
  the current policy (the paper's "short replay buffer" in its limit), with small checkpoints
  and exact resume. The ``flow_updates`` flow minibatches of an update are drawn from that
  batch. Imagined states are clamped into the range of the data's features (``feature_box``):
  beyond it the model extrapolates freely, and the flows would model its extrapolations.
* Offsets: a triple picks a logged step t uniformly and j ~ Geom(1 − γ), and s̄ = s_{t+j+1} in
  the rollouts (or episodes) laid end to end and closed into a cycle, each rollout's last
  state followed by the next one's first: the paper's "transitions from terminal to initial
  states" (section 3.2), which makes j exactly Geom(1 − γ) — no offset is redrawn or cut to
  fit an episode (``offsets='within'`` keeps targets inside their episode, biased toward short
  offsets). Rollouts are long against the mean offset γ/(1 − γ) (``horizon`` 50 at γ = 0.9),
  so few targets cross into the next rollout.
* Schedule, as the paper's: ``flow_updates`` flow updates per policy update (its simulated
  peg insertion: N_B : N_π = 10,000 : 1,000) after ``burnin`` updates of the flows alone.
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

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmil.algos.base import LatentLearner
from wmil.config import DiscountConfig, LatentConfig, NonNegFloat, NonNegInt, PosFloat, PosInt, StartsConfig
from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.actor_critic import imagine
from wmil.imagination.expert import ExpertLatents
from wmil.nets import MLP, ActionBounds, ActionHead, Standardizer, categorical
from wmil.types import DataSpec

Tensor = torch.Tensor


@dataclass(frozen=True)
class GprilConfig(StartsConfig, DiscountConfig, LatentConfig):
    """GPRIL: predecessor flows B_s(s|s̄), B_a(a|s,s̄) + the policy's β_π/β_d likelihood.
    ``batch_size`` triples per flow update, and demo pairs (and as many flow samples) per policy
    update; ``horizon`` the length of each imagined rollout (it bounds the offset j); ``gamma``
    sets the offset j ~ Geom(1 − γ) between (s, a) and s̄."""

    predecessors: Literal["policy", "data"] = "policy"
    """Source of the (s, a, s̄) triples: 'policy' (imagined rollouts of π, the paper) or 'data'
    (the world model's offline datasets)."""
    rollout_starts: PosInt = 64
    """Imagined rollouts of the current policy per update (predecessors='policy')."""
    beta_pi: NonNegFloat = 1.0
    """β_π: weight of log π(ā | s̄) on demonstrated pairs (behavioural cloning)."""
    beta_d: NonNegFloat = 1.0
    """β_d: weight of log π(a | s) on predecessor pairs sampled from the flows."""
    burnin: NonNegInt = 0
    """Updates that train only the flows before the policy starts learning."""
    flow_updates: PosInt = 10
    """Flow minibatch updates per update (the policy takes one): the paper's N_B : N_π = 10,000 : 1,000 (simulation), 15,000 : 5,000 (clip insertion)."""
    offsets: Literal["wrap", "within"] = "wrap"
    """Targets s̄ = s_{t+j+1}, j ~ Geom(1 − γ): 'wrap' on the episodes closed into one cycle (terminal → next initial state, the paper; j exactly geometric), 'within' redrawn until inside the episode (biased toward short offsets)."""
    flow_transforms: PosInt = 2
    """Stacked autoregressive transforms (MADEs) per flow (paper: 2)."""
    flow_layers: NonNegInt = 2
    """Hidden layers of each MADE (paper: 2)."""
    flow_units: PosInt = 256
    """Units per hidden layer of each MADE (paper: 500)."""
    flow_passes: NonNegInt = 16
    """Autoregressive blocks of the state flow, i.e. network passes to sample it; 0 = one per
    dimension (fully autoregressive, the paper; slow to sample for large latents)."""
    flow_lr: PosFloat = 1e-4
    """Adam learning rate of both flows (paper: 1e-5 to 3e-5 over 10^6 updates)."""
    flow_weight_decay: NonNegFloat = 0.0
    """L2 regularisation of the flows (paper: 1e-2 / 1e-3)."""
    flow_noise: NonNegFloat = 0.05
    """Std of the dequantisation noise added to standardised s and s̄ while the flows train."""
    std_floor: PosFloat = 0.1
    """Lower bound of the per-dimension std used to standardise the features."""
    flow_grad_clip: PosFloat = 100.0
    """Global gradient-norm clip of the flows (paper: 100)."""
    eval_triples: PosInt = 256
    """Held-out triples (drawn once, at the start) for the flows' log-likelihood metric."""

    DEFAULTS: ClassVar = dict(
        units=256,        # paper: policy MLP of 300 and 200 units
        min_std=0.05,     # paper: σ in (0.01, 0.1)
        actor_lr=1e-4,    # paper: policy learning rate 1e-4
        horizon=50,       # rollouts long against the mean offset γ/(1 − γ) = 9, so few targets wrap into the next
        gamma=0.9,        # paper, simulation: 0.9
    )
    PRESETS: ClassVar = {
        "tiny": dict(batch_size=16, rollout_starts=8, horizon=5, gamma=0.5, flow_layers=1, flow_units=32,
                     flow_passes=4, layers=1, units=32, eval_triples=32, eval_starts=16, world_episodes=10),
        "small": dict(),
        "paper": dict(flow_units=500, flow_passes=0, flow_lr=2e-5, flow_weight_decay=1e-2, burnin=50_000,
                      rollout_starts=256),
    }


# ------------------------------------------------------------------------- pure functions


def geometric_offsets(rng: np.random.Generator, offsets: np.ndarray, n_actions: np.ndarray, size: int,
                      gamma: float, wrap: bool = True, max_tries: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(t_row, target_row)`` of ``size`` triples inside episodes laid end to end.

    Episode e occupies rows ``offsets[e] … offsets[e] + n_actions[e]`` (T actions, T + 1
    states). (s, a) is a uniformly drawn logged step t; the target is s̄ = s_{t+j+1} with
    j ~ Geom(1 − γ) on {0, 1, …} (P(j) = (1 − γ) γ^j).

    ``wrap`` (the paper's episodic case): the episodes, which must be laid end to end without
    gaps, form one cycle in which each episode's last state is followed by the next episode's
    first (the last episode by the first), so j is exactly geometric and the target row is
    t_row + j + 1 taken round the cycle. Otherwise j is redrawn while t + j + 1 > T so the
    target stays in the episode (after ``max_tries`` redraws it is cut to T − t − 1): offsets
    are then biased toward short ones, more so the shorter the episodes.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n_actions = np.asarray(n_actions, dtype=np.int64)
    weights = n_actions / n_actions.sum()
    episode = rng.choice(len(n_actions), size, p=weights)
    T = n_actions[episode]
    t = (rng.random(size) * T).astype(np.int64)
    j = _geometric(rng, size, gamma)
    start = offsets[episode] + t
    if wrap:
        ends = offsets + n_actions + 1
        if len(offsets) > 1 and not (offsets[1:] == ends[:-1]).all():
            raise ValueError("geometric_offsets(wrap=True) needs episodes laid end to end without gaps")
        first, total = int(offsets[0]), int(ends[-1] - offsets[0])
        return start, first + (start - first + j + 1) % total
    for _ in range(max_tries):
        bad = t + j + 1 > T
        if not bad.any():
            break
        j[bad] = _geometric(rng, int(bad.sum()), gamma)
    j = np.minimum(j, T - t - 1)
    return start, start + j + 1


def _geometric(rng: np.random.Generator, size: int, gamma: float) -> np.ndarray:
    if gamma <= 0:
        return np.zeros(size, np.int64)
    return rng.geometric(1.0 - gamma, size).astype(np.int64) - 1  # numpy's support is {1, 2, …}


# ------------------------------------------------------------------------ the flows


class Triples(NamedTuple):
    """(s, a, s̄) with s̄ j + 1 steps after (s, a); features unstandardised."""

    state: Tensor   # (B, F)
    action: Tensor  # (B, A) one-hot or continuous
    target: Tensor  # (B, F)


def _full_precision(x: Tensor):
    """No autocast on ``x``'s device inside (a bf16 run's flows compute in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _float_masks(module: nn.Module) -> None:
    """Make each of zuko's masked linear layers in ``module`` multiply its weight by a float copy
    of its boolean mask. zuko computes ``mask * weight`` at every call with the mask stored as
    bool, and torch's mixed-dtype product converts the mask on the way: the forward and backward
    pass of a 2448 × 256 layer take 14.5 ms with the boolean mask against 8.5 ms with a float one
    (one CPU thread), and GPRIL calls its flows ten times an update. The product is the same
    number for number (0/1 times the weight). The float copy is kept out of the checkpoint (the
    boolean mask stays there) and refreshed whenever a state dict is loaded."""
    from zuko.nn import MaskedLinear

    for layer in module.modules():
        if isinstance(layer, MaskedLinear):
            layer.__class__ = _float_masked_linear()
            layer.register_buffer("float_mask", layer.mask.to(layer.weight.dtype), persistent=False)


@functools.cache
def _float_masked_linear() -> type:
    """zuko's ``MaskedLinear`` with its product taken with ``float_mask`` (:func:`_float_masks`),
    built on first use since zuko is imported lazily."""
    from zuko.nn import MaskedLinear

    class FloatMaskedLinear(MaskedLinear):
        def forward(self, x: Tensor) -> Tensor:
            return F.linear(x, self.weight * self.float_mask, self.bias)

    return FloatMaskedLinear


class PredecessorModel(nn.Module):
    """B_s(s | s̄) · B_a(a | s, s̄) on standardised features (zuko MAFs)."""

    def __init__(self, feature_dim: int, spec: DataSpec, config: GprilConfig):
        super().__init__()
        import zuko  # lazy: only GPRIL needs the flow library

        self.discrete = spec.discrete
        hidden = (config.flow_units,) * config.flow_layers
        passes = config.flow_passes if 0 < config.flow_passes < feature_dim else None
        self.state_flow = zuko.flows.MAF(feature_dim, feature_dim, transforms=config.flow_transforms,
                                         hidden_features=hidden, passes=passes)
        if spec.discrete:
            self.action_head = MLP(2 * feature_dim, spec.action_dim, config.flow_layers, config.flow_units, "relu")
        else:
            self.action_flow = zuko.flows.MAF(spec.action_dim, 2 * feature_dim, transforms=config.flow_transforms,
                                              hidden_features=hidden)
        self.bounds = ActionBounds(spec)
        #: Standardises the features (set from the expert latents by the learner).
        self.standardize = Standardizer(feature_dim)
        _float_masks(self)
        self.register_load_state_dict_post_hook(lambda module, keys: _float_masks(module))

    def log_prob(self, state: Tensor, action: Tensor, target: Tensor, noise: float = 0.0) -> tuple[Tensor, Tensor]:
        """(log B_s(s|s̄), log B_a(a|s,s̄)), each ``(B,)``, on unstandardised features; s and s̄
        get dequantisation noise of std ``noise`` (standardised units)."""
        with _full_precision(state):  # the flows' log-determinants need float32 under bf16 autocast
            return self._log_prob(state, action, target, noise)

    def _log_prob(self, state: Tensor, action: Tensor, target: Tensor, noise: float) -> tuple[Tensor, Tensor]:
        s, s_bar = self.standardize(state), self.standardize(target)
        if noise > 0:
            s = s + noise * torch.randn_like(s)
            s_bar = s_bar + noise * torch.randn_like(s_bar)
        log_s = self.state_flow(s_bar).log_prob(s)
        context = torch.cat([s, s_bar], -1)
        if self.discrete:
            log_a = F.log_softmax(self.action_head(context), -1).gather(-1, action.argmax(-1, keepdim=True)).squeeze(-1)
        else:
            log_a = self.action_flow(context).log_prob(self.bounds.to_unit(action))
        return log_s, log_a

    @torch.no_grad()
    def sample(self, target: Tensor) -> tuple[Tensor, Tensor]:
        """(s (B, F) unstandardised, a (B, A)) ~ B(·, · | s̄) for targets ``(B, F)``."""
        with _full_precision(target):
            return self._sample(target)

    def _sample(self, target: Tensor) -> tuple[Tensor, Tensor]:
        s_bar = self.standardize(target)
        s = self.state_flow(s_bar).sample()
        context = torch.cat([s, s_bar], -1)
        if self.discrete:
            action, _, _ = categorical(self.action_head(context))
        else:
            action = self.bounds.from_unit(self.action_flow(context).sample().clamp(-1.0, 1.0))
        return self.standardize.inverse(s), action


# -------------------------------------------------------------------------------- learner


class Gpril(LatentLearner):
    """GPRIL trainer: predecessor flows on (imagined or offline) triples, policy on demos + flow samples."""

    name = "gpril"
    config_cls = GprilConfig
    progress_keys = ("loss/flow_state", "loss/policy_demo")
    metric_keys = ("loss/flow_state", "loss/flow_action")
    data_parallel = True  # rollouts, triples, demo rows and flow targets are sharded global draws

    def batch_counts(self) -> dict[str, int]:
        return {"batch_size": self.config.batch_size, **self.start_counts(self.config.rollout_starts, "rollout_starts")}

    def __init__(self, world_model, expert: Dataset, config: GprilConfig, device: torch.device):
        if config.gamma >= 1.0:
            raise config.invalid("gamma", "must be below 1 (offsets j ~ Geom(1 - gamma))")
        super().__init__(world_model, expert, config, device)
        self.start_rows = self.expert.starts(0)
        self.data: Optional[ExpertLatents] = None
        # Imagined states are clamped into the data's feature box (LatentLearner.feature_box). It
        # is built now, not at the first rollout: encoding the world data may draw from torch's
        # generator (sampled latents), and a resumed run must draw it at the same point.
        self.box = self.feature_box()
        if config.predecessors == "data":
            self.data = self.world
            if int((self.data.n_obs - 1).sum()) == 0:
                raise UserError("gpril: the world model's datasets have no transitions for predecessors='data'")
        model = PredecessorModel(self.feature_dim, self.spec, config)
        model.standardize.fit(self.expert.features, floor=config.std_floor)
        self.model = self.add_network("model", model, lr=config.flow_lr, weight_decay=config.flow_weight_decay)
        self.add_network("actor", ActionHead(self.feature_dim, self.spec, config), lr=config.actor_lr)
        self.seed_rng()
        self.eval_rows = self.metric_rows()

    # ---- triples -----------------------------------------------------------------------
    @torch.no_grad()
    def trajectories(self, rng: Optional[np.random.Generator] = None) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
        """What triples are drawn from: ``(features (N, F), actions (N, A), offsets (E,),
        n_actions (E,))`` of episodes laid end to end — fresh imagined rollouts of the current
        policy (one episode of H actions each), or the offline data."""
        rng = self.rng if rng is None else rng
        cfg = self.config
        if self.data is not None:
            source = self.data
            return source.features, source.action, source.offsets, source.n_obs - 1
        start = self.start_states(cfg.rollout_starts, self.start_rows, rng)   # this process's share
        imagined = imagine(self.world_model, self.actor, start, cfg.horizon, cfg.features)
        # Each rollout is one episode of H actions: rows b·(H+1) … b·(H+1)+H; states clamped into the data's range.
        features = imagined.features.clamp(*self.box).transpose(0, 1).reshape(-1, imagined.features.shape[-1])
        actions = torch.cat([imagined.actions, torch.zeros_like(imagined.actions[:1])]).transpose(0, 1)
        actions = actions.reshape(-1, self.spec.action_dim)
        rollouts = imagined.actions.shape[1]
        return features, actions, np.arange(rollouts) * (cfg.horizon + 1), np.full(rollouts, cfg.horizon)

    def triples(self, size: int, rng: Optional[np.random.Generator] = None,
                source: Optional[tuple] = None) -> Triples:
        """``size`` triples (s_t, a_t, s_{t+j+1}) from ``source`` (:meth:`trajectories`; fresh
        ones when None), offsets as ``offsets`` says. ``size`` is global: in a data-parallel run
        every process draws as many from its own rollouts (or the shared data), consuming the
        generator alike, and keeps its block (:meth:`shard`)."""
        rng = self.rng if rng is None else rng
        features, actions, offsets, n_actions = self.trajectories(rng) if source is None else source
        at, target = geometric_offsets(rng, offsets, n_actions, size, self.config.gamma,
                                       wrap=self.config.offsets == "wrap")
        at, target = torch.as_tensor(self.shard(at), device=self.device), torch.as_tensor(self.shard(target),
                                                                                          device=self.device)
        return Triples(features[at], actions[at], features[target])

    # ---- update ------------------------------------------------------------------------
    def flow_loss(self, triples: Triples, noise: float) -> tuple[Tensor, Tensor]:
        log_s, log_a = self.model.log_prob(triples.state, triples.action, triples.target, noise)
        return -log_s.mean(), -log_a.mean()

    def update(self, step: int) -> dict:
        cfg = self.config
        # Predecessor models (Algorithm 1, lines 3–9): flow_updates minibatches of one fresh batch of rollouts.
        source = self.trajectories()
        loss_s = loss_a = norm = 0.0
        for _ in range(cfg.flow_updates):
            term_s, term_a = self.flow_loss(self.triples(cfg.batch_size, source=source), cfg.flow_noise)
            losses = self.mean_over_processes({"s": float(term_s.detach()), "a": float(term_a.detach())})
            value_s, value_a = losses["s"], losses["a"]   # every process stops alike on a non-finite loss
            if not (math.isfinite(value_s) and math.isfinite(value_a)):
                # the trainer's NaN guard stops the run before anything is saved
                return {"loss/flow_state": value_s, "loss/flow_action": value_a}
            norm += float(self.step("model", term_s + term_a, cfg.flow_grad_clip)) / cfg.flow_updates
            loss_s += value_s / cfg.flow_updates
            loss_a += value_a / cfg.flow_updates
        metrics = {"loss/flow_state": loss_s, "loss/flow_action": loss_a, "flow/grad_norm": norm}
        if step <= cfg.burnin:
            return metrics
        # Policy (lines 10–14): β_π log π(ā|s̄) on demo pairs + β_d log π(a|s), (s, a) ~ B(·|s̄).
        demo = self.expert_rows(cfg.batch_size)
        targets = torch.as_tensor(self.shard(self.rng.choice(self.start_rows, cfg.batch_size)), device=self.device)
        state, action = self.model.sample(self.expert.features[targets])
        if not (torch.isfinite(state).all() and torch.isfinite(action).all()):
            raise UserError(f"step {step}: the predecessor flows produced non-finite samples; training stopped "
                            "(the last checkpoint is intact); lower flow_lr or raise flow_noise/std_floor")
        log_demo = self.actor.log_prob(self.expert.features[demo], self.expert.action[demo]).mean()
        log_pred = self.actor.log_prob(state, action).mean()
        policy_loss = -(cfg.beta_pi * log_demo + cfg.beta_d * log_pred)
        metrics["actor/grad_norm"] = float(self.step("actor", policy_loss, cfg.grad_clip))
        metrics.update({"loss/policy": float(policy_loss.detach()), "loss/policy_demo": float(-log_demo.detach()),
                        "loss/policy_predecessor": float(-log_pred.detach())})
        return metrics

    # ---- evaluation and state ----------------------------------------------------------
    @torch.no_grad()
    def heldout_log_likelihood(self) -> tuple[float, float]:
        """Mean (log B_s, log B_a), without noise, of ``eval_triples`` triples drawn now from the
        current policy's rollouts (or the data), which the flows never trained on. They come
        from their own seeds, so the training random streams do not depend on them, and the
        flows are scored on the predecessors they currently model rather than on those of the
        initial policy."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4321)
            triples = self.triples(self.config.eval_triples, np.random.default_rng(4321))
        log_s, log_a = self.model.log_prob(*triples)
        return float(log_s.mean()), float(log_a.mean())

    def evaluate(self) -> dict:
        """Offline metrics: the flows' held-out log-likelihood, and the latent learners' (latent
        distance of imagined rollouts from expert starts, expert action prediction)."""
        log_s, log_a = self.heldout_log_likelihood()
        return {"eval/flow_log_prob_state": log_s, "eval/flow_log_prob_action": log_a, **super().evaluate()}


__all__ = ["GprilConfig", "Gpril", "PredecessorModel", "Triples", "geometric_offsets"]
