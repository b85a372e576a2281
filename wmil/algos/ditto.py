"""DITTO: Dream Imitation (DeMoss et al., 2023, "DITTO: Offline Imitation Learning with World Models").

The agent is unrolled for H steps in the world model from expert start states (the authors';
wmil's default starts from world-data states instead, below) and rewarded,
for its k-th action, for matching the expert's own latent at the same step of the window that
followed the start — the state it arrives in against the expert's (the authors' code:
``ac_trainer.py``):

    r_k = sim(s_{k+1}, e_{k+1}),   sim(x, y) = x·y / max(‖x‖, ‖y‖)²      (1 when equal)

so the start state (always the expert's) earns nothing and the last imagined state is rewarded.
By default the reward compares the recurrent state h only (``reward_features='deter'``, the
authors' choice: with the sampled z in it most of the reward is sampling noise, mean similarity
0.59–0.66 against 0.92–0.95 on h), while the actor and critic read [h, z] with z sampled
(``features='sample'``, DreamerV2; z comes from the prior in imagination and from the posterior
at deployment, the distributions the prior is trained to match). The reward is optimised by the
shared actor-critic in imagination (:mod:`wmil.imagination.actor_critic`): λ-returns with
γ = λ = 0.95, advantages standardised per batch with entropy weight 0.05 (the authors' pair),
REINFORCE for discrete actions, dynamics backprop for continuous ones (``actor_grad='dynamics'``
backpropagates through the model for discrete actions too, with straight-through one-hots),
Adam at 3e-4, a target critic copied every 100 updates. Policies act by sampling at test time,
as the authors evaluate. The environment is never touched. On a world model trained with a
continue head (``-o continue_head=true``; the authors' models have none) each imagined step is
discounted by γ · P(continue) (DreamerV2's actor-critic, ``continue_discount``): an imagined
episode end costs every reward the window would still have paid.

Measured option for covariate shift: ``features='mean'`` (the actor reads [h, E z]). On CartPole
from shifted starts (1 demo, 2 seeds, ``benchmarks/results/quality-cartpole.md``) it scored
0.61 ± 0.12 against 0.41 with the default sampled z and 0.26 with h alone (standard starts 1.00
either way): a z sampled afresh at every step is noise the actor reacts to in states the demos
never showed. Confirmed on held-out seeds (3, 4: new world models) and under action noise, a
protocol no setting was chosen on: 0.91 / 0.66 / 0.36 (standard / noise / shifted) against
0.75 / 0.31 / 0.23 with sampled z (BC 0.49 / 0.41 / 0.16). LunarLander does not confirm it
(seed 0, standard / shifted: 1 demo 0.31 / 0.22 against 0.27 / 0.17, 4 demos −0.05 / 0.18
against 0.22 / 0.21; every DITTO cell there is a miss), so the default stays the authors'.

Default beyond the paper, ``starts='world'`` (``'mixed'``: half of each batch; ``'expert'``: the
authors' setting): start from states of the world model's own datasets, the drift the demos
never show, each paired with the expert window whose first state is nearest to it under the
reward's own similarity (on the reward features; an RSSM episode's first rows are left out when
the reward is on h, whose value there is the initial state whatever the episode shows). The
rollout is then rewarded for rejoining what the expert did from the most similar state it
visited. The authors start from expert states only, so the reward is defined only within H
steps of the demonstrations. Measured against expert starts on the same world models, in one
sitting (benchmarks/results/quality-*.md, standard / shifted starts, sampled actions):
CartPole 1 demo, 5 seeds, 0.94 ± 0.06 / 0.60 ± 0.09 against 0.81 ± 0.07 / 0.34 ± 0.05 (BC
0.50 / 0.18); LunarLander 4 demos, 3 seeds, 0.42 ± 0.07 / 0.18 ± 0.06 against 0.01 ± 0.10 /
0.12 ± 0.06 (BC 1.11 / 0.84; both misses), 1 demo, one seed, 0.20 / 0.28 against 0.30 / 0.21;
Pendulum 4 demos, 5 seeds, 0.30 ± 0.06 / 0.36 ± 0.12 against −0.01 ± 0.03 / 0.12 ± 0.02 (0.46 /
0.64 with 1,500 updates). MinAtar Breakout (half of the starts, 16 demos, seed 0): 0.08 / 0.11
sampled / greedy against 0.10 / 0.11, no gain. From Pendulum's hanging-at-rest start the
nearest expert state is far (similarity 0.55 on h) and, at γ = 0.95, holding +2 N·m out-scores
the expert's swing-up in the imagined return, so some seeds hang there
(``benchmarks/pendulum_model_check.py --policy``); a 45-step horizon with γ = 0.99 ranks the
swing-up first and lifted one such seed from 0.17 to 0.90 (another: 0.17 to 0.33), but
lowered two that swing up at 15 steps (1.01 to 0.87, 0.99 to 0.67), so it stays an option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from wmil.algos.base import ImitationConfig, ImitationLearner
from wmil.config import Prob, Starts, StartsConfig
from wmil.imagination.actor_critic import imagine
from wmil.imagination.metrics import ditto_similarity, ditto_similarity_matrix
from wmil.types import Imagined, State

Tensor = torch.Tensor


@dataclass(frozen=True)
class DittoConfig(StartsConfig, ImitationConfig):
    """DITTO = the shared actor-critic + the latent-matching reward (``starts``: world-data starts
    matched to the nearest expert window by default, the module's docstring)."""

    starts: Starts = "world"
    """Start states of imagined rollouts: 'world'-data states, each paired with the expert window whose first state is nearest (the default, a measured departure from the authors, who start from expert states only: the module's docstring), 'expert' states (the authors'), or half of each ('mixed')."""
    early_starts: Prob = 0.0
    """Fraction of each batch's start states drawn from the first ``horizon`` steps of the expert episodes (0: uniform over every start row, the authors'). An option for tasks whose first steps decide an episode and are a sliver of the data: in MinAtar Breakout the first ball is lost about 6 steps after reset, and the two reset frames are 0.1 % of the rows (measured there: 0.03 with and without it, README Benchmarks)."""

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

    def __init__(self, world_model, expert, config: DittoConfig, device: torch.device):
        if config.early_starts and config.starts == "world":
            raise config.invalid("early_starts", "draws expert start rows, and starts='world' uses none; "
                                                 "give -o starts=expert or starts=mixed with it")
        super().__init__(world_model, expert, config, device)
        #: The start rows within the first ``horizon`` steps of their episode (``early_starts``).
        self.early_rows = self.expert.starts(config.horizon, first=config.horizon)
        #: World-data start rows and the expert start rows' reward latents (world starts; on first use).
        self._world_rows: Optional[np.ndarray] = None
        self._start_latent: Optional[Tensor] = None
        self._match_similarity = 0.0  # of the last batch's world starts (logged as reward/world_match)

    def start_rows(self, count: int) -> np.ndarray:
        """As the base's, with a share ``early_starts`` of them from :attr:`early_rows`."""
        if self.config.early_starts == 0:
            return super().start_rows(count)
        n_early = int(round(count * self.config.early_starts))
        return np.concatenate([self.rng.choice(self.early_rows, n_early), self.rng.choice(self.starts, count - n_early)])

    def sample_starts(self) -> tuple[State, Tensor]:
        """As the base's for ``starts='expert'``. Otherwise all ('world') or half ('mixed') of the
        batch starts from world-data states (any but an episode's last observation), each with
        the reward latents of the expert window from :meth:`nearest_starts` of it; the expert
        part comes first, as in :meth:`start_states`."""
        mode, count, horizon = self.config.starts, self.config.batch_size, self.config.horizon
        if mode == "expert":
            return super().sample_starts()
        n_world = count if mode == "world" else count // 2
        states, windows = [], []
        if count - n_world:
            state, window = super().sample_starts(count - n_world)
            states.append(state)
            windows.append(window)
        if self._world_rows is None:
            self._world_rows = self.matchable_world_rows()
        rows = self.shard(self.rng.choice(self._world_rows, n_world))
        index = torch.as_tensor(rows, device=self.world.features.device)
        start = self.world.states[index]
        matched, similarity = self.nearest_starts(self.reward_latent(start, self.world.features[index]))
        self._match_similarity = float(similarity.mean())
        states.append(start)
        windows.append(self.expert_latent[self.expert.window(matched, horizon)])
        return (states[0], windows[0]) if len(states) == 1 else (State.cat(states), torch.cat(windows, 1))

    @torch.no_grad()
    def matchable_world_rows(self) -> np.ndarray:
        """World-data start rows (any but an episode's last observation), without the episodes'
        first rows where their reward latents are all the same: an RSSM's h before its first
        observation is its initial state whatever the episode shows, so on h (the default reward
        features) every first row ties with every expert episode's first row, and the nearest
        window would be whichever expert episode comes first."""
        rows, first = self.world.starts(1), self.world.offsets
        index = torch.as_tensor(first, device=self.world.features.device)
        latent = self.reward_latent(self.world.states[index], self.world.features[index])
        if len(first) > 1 and bool(torch.isclose(latent, latent[:1], rtol=0, atol=1e-6).all()):
            rows = np.setdiff1d(rows, first)
        return rows

    @torch.no_grad()
    def nearest_starts(self, latent: Tensor) -> tuple[np.ndarray, Tensor]:
        """``(rows (B,), similarity (B,))``: for each reward latent ``(B, L)`` the expert start row
        (one of :attr:`starts`) whose reward latent is most similar under DITTO's similarity
        x·y / max(‖x‖, ‖y‖)², and that similarity."""
        if self._start_latent is None:
            self._start_latent = self.expert_latent[torch.as_tensor(self.starts, device=self.expert_latent.device)]
        best, where = ditto_similarity_matrix(latent, self._start_latent.to(latent.device)).max(1)
        return self.starts[where.cpu().numpy()], best

    def rewards(self, imagined: Imagined, expert: Tensor) -> tuple[Tensor, Tensor]:
        """(reward (H, B), similarity (H+1, B)) of an imagined rollout against the expert
        window's reward latents ``expert (H+1, B, L)``: reward k = similarity k + 1, earned on
        arriving in state k + 1 (the start earns nothing)."""
        agent = self.imagined_latent(imagined)
        similarity = ditto_similarity(expert, agent)
        return similarity[1:], similarity

    def update(self, step: int) -> dict:
        start, expert = self.sample_starts()
        imagined = imagine(self.world_model, self.actor, start, self.config.horizon, self.config.features)
        reward, similarity = self.rewards(imagined, expert)
        bc, bc_metrics = self.bc_term()
        metrics = {**self.ac.update(imagined, reward, self.discount(imagined), actor_extra=bc,
                                      gather=self.gather), **bc_metrics}
        metrics["reward/latent_distance"] = float(1 - similarity[1:].detach().mean())
        if self.config.starts != "expert":
            metrics["reward/world_match"] = self._match_similarity
        return metrics
