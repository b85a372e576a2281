"""VINS: Value Iteration with Negative Sampling (Luo, Xu & Ma, ICLR 2020, "Learning
Self-Correctable Policies and Value Functions from Demonstrations with Negative Sampling").

The real algorithm of its paper (Algorithm 2, no environment interaction), adapted to the
offline setting of wmil. From demonstrations only it learns

* a value function V_φ of the sparse reward r = −1 per step (0 after the goal, a terminal
  state whose value is 0), by TD with a Polyak target network V_φ̄ (paper section 5):

      L_td = E (r + γ·(1 − done)·V_φ̄(s') − V_φ(s))²

  on demo transitions augmented by linear interpolation between consecutive states
  (appendix D.2): for u ~ U[0, 1] the state s + u(s' − s) is a fraction (1 − u) of a step
  from s', so its target is (1 − u)·r + γ^(1−u)·V_φ̄(s'). (The paper writes the reward as λr;
  with λ the fraction travelled, that would give s itself a zero reward, so we use the
  fraction that remains, which makes u = 0 the plain TD target.) Converged, V(s′) − V(s) on
  a demo transition n steps before the goal is γ^(n−1) (≈ 1 for γ = 0.99); the held-out
  metrics ``eval/value_step_gain`` and ``eval/value_step_gain_expected`` check it.
* the negative-sampling loss that makes V conservatively extrapolated (eq. 4.2):

      L_ns = E (V_φ(s) − λ‖s − s̃‖ − V_φ(s̃))²,   s̃ = s + N(0, ρ·diag(σ²))

  L = L_td + μ·L_ns. The paper's σ² is the per-coordinate variance of the demo states
  (``ns_scale='demo'``). By default σ is the RMS of a demo *step* s′ − s (``'step'``): the
  shooting step ranks successors a fraction of a step apart (FetchPush: 1.5–6 mm), and a V
  taught to fall off the demos only at the scale of the whole demo spread (~28 mm at ρ = 0.1)
  is flat at that scale. The distance is measured in units of σ (``ns_normalized_distance``),
  so λ = 1 makes one step-size off the demos cost one step. The paper perturbs "the arm only"
  (Push) or "the arm or the gripper" (PickAndPlace): ``perturb_indices`` takes groups
  separated by ';', and each negative sample perturbs one group drawn uniformly.
* a BC policy π_BC on the full observation (:mod:`wmil.algos.supervised`: same network, MSE
  loss and held-out model selection as the paper's BC baseline);
* the dynamics model M(s, a): the ``dynamics`` world model of ``--model`` (trained by
  ``wmil train-model --model dynamics`` with the paper's L2-norm loss; ``-o obs_indices=…
  -o units=500`` is the paper's set-up on reduced states). Offline adaptation: M is trained on
  the whole world dataset, not only on the demos, and stays fixed here.

Held-out demo episodes (π_BC's validation episodes, ``validation_fraction``) are never trained
on by π_BC or V. On them every evaluation measures V's convergence, picks the shooting spread
α from ``alpha_grid`` (the α whose VINS actions agree best with the expert's; α = 0 is π_BC
alone) and scores V for model selection (``value_selection``).

The deployed policy is Algorithm 2's ``POLICY(s)`` by random shooting: k actions
a_BC + α·ξ_i with ξ_i ~ U[−1, 1]^m (α in half-ranges of the action space, i.e. the paper's α
for actions in [−1, 1]; option ``shooting_center='zero'`` is the paper's option 2, a = 0),
clipped to the bounds, and the one with the largest V(M(s, a_i)). Discrete action spaces
(outside the paper) score every action. Where V(s) ≥ ``goal_value`` (V says the goal is
reached) it acts with π_BC: the paper's environment stops at the goal, gymnasium's Fetch does
not, and shooting on after a success lost it (PickAndPlace-100: 96 % success at any step,
66 % at the last). ``state_indices`` restricts V (and its perturbations) to a subset of
observation coordinates, as the paper does on Fetch (gripper and object positions).

Latent variant (the extension the paper's conclusion suggests, "negative sampling in the
representation space"): with an ``rssm``/``gaussian_rssm`` world model, states are the model's
features [h, z] of the posterior of each demo observation, s̃ perturbs those features with
their own per-coordinate scale, π_BC acts on features, M is the model's prior step
(``imagine_step``), and the deployed policy filters real observations through the posterior.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import numpy as np
import torch
from torch import nn

from wmil.algos.base import Learner, Selection
from wmil.algos.supervised import BCConfig, BCNet, BCTrainer, Demos, demo_pairs, patience_refusal, split_demos
from wmil.config import (Activation, DiscountConfig, NonNegFloat, NonNegInt, PosFloat, PosInt, TargetConfig,
                         parse_index_groups, parse_indices)
from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.expert import ExpertLatents
from wmil.nets import MLP, ActionBounds, Standardizer, update_target
from wmil.policy import FilteringPolicy
from wmil.types import DataSpec, State

Tensor = torch.Tensor

#: The paper's sparse reward: −1 for every step before the goal.
STEP_REWARD = -1.0


@dataclass(frozen=True)
class VINSConfig(TargetConfig, DiscountConfig, BCConfig):
    """VINS = the BC fields (its π_BC) + value learning with negative sampling + shooting."""

    value_layers: NonNegInt = 2
    """Hidden layers of V (VINS paper: 1; 2 ranks held-out FetchPush successors better: eval/expert_preferred 0.51 → 0.58)."""
    value_units: PosInt = 512
    """Units per hidden layer of V (VINS paper: 256)."""
    value_norm: bool = True
    """LayerNorm in V's hidden layers (VINS paper: yes)."""
    value_act: Activation = "relu"
    """Activation of V's hidden layers."""
    value_lr: PosFloat = 3e-4
    """Adam learning rate of V (VINS paper: 3e-4)."""
    value_std_floor: NonNegFloat = 0.1
    """Lower bound of the std that normalises each of V's inputs, as a fraction of the median std of V's coordinates (0: only 1e-3)."""
    ns_weight: NonNegFloat = 1.0
    """μ: weight of the negative-sampling loss."""
    goal_weight: NonNegFloat = 1.0
    """Weight of L_goal = E V(s_goal)² on the demos' goal observations (their value is 0 by definition; 0 turns it off)."""
    ns_lambda: NonNegFloat = 1.0
    """λ: value lost per unit of distance from the demo state."""
    ns_rho: PosFloat = 0.1
    """ρ: perturbations s̃ ~ N(s, ρ·diag(σ²)), σ per coordinate as ns_scale says."""
    ns_scale: Literal["step", "demo"] = "step"
    """σ of the perturbations and distances: 'step' the RMS of a demo step s′ − s per coordinate (the scale at which shooting ranks successors), 'demo' the std of the demo states (the paper's Σ)."""
    ns_normalized_distance: bool = True
    """Measure ‖s − s̃‖ in units of σ (ns_scale) so λ means the same on every task (False: the raw norm)."""
    interpolate: bool = True
    """Augment V's transitions by linear interpolation between consecutive demo states."""
    terminal: Literal["auto", "dataset", "success", "last", "none"] = "auto"
    """Where the goal (a terminal of value 0) is: 'dataset' terminations, first 'success' (info is_success; later steps dropped), 'last' observation of every demo, 'none', or 'auto' (success if recorded, else dataset)."""
    state_indices: str = ""
    """Observation coordinates V sees, e.g. '3,4,5' or '3:9' (empty: all)."""
    perturb_indices: str = ""
    """Coordinates negative sampling perturbs, within state_indices; groups separated by ';' are perturbed one at a time, one group drawn per sample (PickAndPlace, the arm or the gripper: '0:3;9:11'); empty: all of V's coordinates."""
    shooting_samples: PosInt = 100
    """k: random-shooting candidates per action (continuous actions)."""
    shooting_alpha: NonNegFloat = 0.05
    """α: candidate spread, in half-ranges of the action space, when alpha_grid is empty (else the first α deployed)."""
    alpha_grid: str = "0,0.02,0.05,0.1,0.2"
    """α values tried at every evaluation on held-out demo states; the one whose VINS actions are closest to the expert's is deployed with V (0 = π_BC alone; empty: always shooting_alpha)."""
    shooting_center: Literal["bc", "zero"] = "bc"
    """'bc': search around π_BC(s) (the paper's option 1); 'zero': around a = 0 (option 2)."""
    goal_value: Optional[float] = -0.5
    """Where V(s) is at least this, V says the goal is reached and the policy acts with π_BC instead of shooting (V = 0 at the goal, −1 a step before it; None: always shoot)."""
    eval_states: PosInt = 256
    """Demo transitions used for the offline ranking metrics (eval/ns_rank, eval/td_order)."""
    value_selection: Literal["action", "td", "preference", "last"] = "action"
    """Which V (with its α) the policy keeps, scored on held-out demo episodes V never trained on: 'action' the lowest VINS action error at its α, 'td' the lowest TD error, 'preference' the highest eval/expert_preferred, or 'last'."""
    selection_states: PosInt = 256
    """Held-out demo states that choose α and score V (each α costs shooting_samples × this many V and M evaluations)."""

    DEFAULTS: ClassVar = dict(
        **BCConfig.DEFAULTS,
        continuous_loss="mse",            # π_BC: the paper's BC ("we use MSE loss for predicting the actions")
        gamma=0.99,                       # the TD target's discount (the paper's sparse −1 reward)
        target_every=0, target_tau=0.01,  # a Polyak target V, as the paper's
    )
    PRESETS: ClassVar = {
        "tiny": dict(layers=1, units=32, batch_size=32, cnn_depth=4, value_units=32, shooting_samples=8,
                     eval_states=32, selection_states=32),
        "small": dict(),
        "paper": dict(layers=3, units=256, value_layers=1, value_units=256),
    }


# ------------------------------------------------------------------------------ pure functions


def td_target(reward: Tensor, next_value: Tensor, done: Tensor, discount: Tensor | float) -> Tensor:
    """``r + γ·(1 − done)·V̄(s')``, all ``(B,)``; a terminal next state has value 0."""
    return reward + discount * (~done).to(next_value.dtype) * next_value


def interpolate_transitions(state: Tensor, next_state: Tensor, u: Tensor, reward: Tensor,
                            gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """VINS's value augmentation: the state a fraction ``u (B,)`` of the way from ``state`` to
    ``next_state`` (both ``(B, D)``), the reward of the remaining ``1 − u`` of the step and its
    discount ``γ^(1−u)``. ``u = 0`` is the original transition, ``u → 1`` reaches s'."""
    mid = state + u.unsqueeze(-1) * (next_state - state)
    return mid, (1 - u) * reward, gamma ** (1 - u)


def perturb(state: Tensor, noise_std: Tensor, noise: Tensor) -> Tensor:
    """Negative samples ``s̃ = s + noise_std·noise``: with ``noise ~ N(0, I)`` and
    ``noise_std = √ρ·σ`` (zero on coordinates not perturbed), s̃ ~ N(s, ρΣ)."""
    return state + noise_std * noise


def negative_sampling_loss(value: Tensor, value_perturbed: Tensor, distance: Tensor, lam: float) -> Tensor:
    """Per-sample ``(V(s) − λ‖s − s̃‖ − V(s̃))²``, all ``(B,)`` (gradients reach both values,
    as in the paper where both are V_φ)."""
    return (value - lam * distance - value_perturbed).pow(2)


def shooting_candidates(center: Tensor, noise: Tensor, alpha: Tensor | float, low: Tensor,
                        high: Tensor) -> Tensor:
    """Algorithm 2, lines 10-12: ``clip(a + α·ξ_i, low, high)``; ``center (B, A)``,
    ``noise (B, k, A)`` in [−1, 1] → ``(B, k, A)``."""
    return torch.maximum(torch.minimum(center.unsqueeze(1) + alpha * noise, high), low)


def select_best(candidates: Tensor, values: Tensor) -> Tensor:
    """``argmax_i V(M(s, a_i))``: ``candidates (B, k, A)``, ``values (B, k)`` → ``(B, A)``."""
    best = values.argmax(-1)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), best]


def value_transitions(n_obs: np.ndarray, offsets: np.ndarray, is_terminal: np.ndarray, rule: str,
                      successes: Optional[list[np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows r of the transitions (row r → row r + 1) V learns from and whether row r + 1 is
    the goal (a terminal of value 0), per the ``terminal`` rule (see :class:`VINSConfig`).

    ``successes[e]`` is episode e's ``is_success`` per observation (T+1 values); with 'success'
    an episode ends at its first successful observation (later transitions are dropped) and
    an episode never successful has no terminal.
    """
    rows, done = [], []
    for e, (start, n) in enumerate(zip(offsets, n_obs)):
        T = int(n) - 1
        end, goal = T, False
        if rule == "dataset":
            goal = bool(is_terminal[start + T])
        elif rule == "last":
            goal = True
        elif rule == "success":
            hits = np.flatnonzero(np.asarray(successes[e])[1:] > 0)  # type: ignore[index]
            if len(hits):
                end, goal = int(hits[0]) + 1, True
        elif rule != "none":
            raise UserError(f"config field 'terminal' is {rule!r}; choose one of "
                            "['auto', 'dataset', 'success', 'last', 'none']")
        if end <= 0:
            continue
        rows.append(np.arange(start, start + end))
        flags = np.zeros(end, bool)
        flags[-1] = goal
        done.append(flags)
    if not rows:
        raise UserError("vins: the expert episodes hold no transitions before their goal")
    return np.concatenate(rows).astype(np.int64), np.concatenate(done)


def goal_rows(n_obs: np.ndarray, offsets: np.ndarray, is_terminal: np.ndarray, rule: str,
              successes: Optional[list[np.ndarray]] = None) -> np.ndarray:
    """Rows of the demo observations that are goals (terminal, value 0) under ``rule``: the
    last observation ('last', or 'dataset' when it terminates), or every successful
    observation from the first success on ('success'). Their value is 0 by the paper's
    definition, but TD never evaluates V there (a terminal's value is not bootstrapped), so
    without L_goal V extrapolates freely at the goal. The paper's environment stops at the goal;
    gymnasium's Fetch does not, and a policy that keeps shooting after a success needs V to
    prefer staying there (measured on FetchPush-100: success at any step 40 %, at the last step
    6 %, without it)."""
    rows = []
    for e, (start, n) in enumerate(zip(offsets, n_obs)):
        last = start + int(n) - 1
        if rule == "last" or (rule == "dataset" and is_terminal[last]):
            rows.append(np.array([last]))
        elif rule == "success":
            hits = np.flatnonzero(np.asarray(successes[e]) > 0)  # type: ignore[index]
            hits = hits[hits >= 1]
            if len(hits):
                rows.append(start + hits[hits >= hits[0]])
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)


def steps_to_goal(rows: np.ndarray, done: np.ndarray) -> np.ndarray:
    """For each transition row of :func:`value_transitions` (episodes in order, each ending
    at its goal where ``done``), the steps n from that row to the goal: 1 for the transition
    into the goal; NaN in an episode that never reaches one."""
    out = np.full(len(rows), np.nan)
    # An episode's transitions are consecutive rows; a new episode starts where rows jump.
    starts = np.flatnonzero(np.r_[True, np.diff(rows) != 1])
    for a, b in zip(starts, np.r_[starts[1:], len(rows)]):
        if done[b - 1]:
            out[a:b] = np.arange(b - a, 0, -1)
    return out


def optimal_value(steps: Tensor, gamma: float) -> Tensor:
    """V*(s) of the sparse reward, n = ``steps`` before the goal: −(1 − γⁿ)/(1 − γ) (−n at γ = 1)."""
    if gamma == 1.0:
        return -steps
    return -(1 - gamma ** steps) / (1 - gamma)


def expected_step_gain(steps: Tensor, gamma: float) -> Tensor:
    """V*(s′) − V*(s) on a demo transition n = ``steps`` before the goal: γ^(n−1) (1 at the goal)."""
    return gamma ** (steps - 1)


def value_input_scale(std: Tensor, floor: float) -> Tensor:
    """The per-coordinate scale that normalises V's inputs: the demo std, floored at ``floor`` ×
    the median std (and 1e-3). A coordinate that barely moves in the demos (FetchPush: the
    block's height, std 1.7 mm against ~9 cm for x and y) would otherwise be stretched ~50×,
    and V's choice between shooting candidates would follow the model's sub-millimetre errors
    on it rather than the gripper's motion (measured: |∂V/∂z_block| ≈ 2,100 per metre against
    10–50 for the gripper, and VINS at 5 % success where its own π_BC alone scores 28 %)."""
    return std.clamp(min=max(1e-3, floor * float(std.median()))) if std.numel() else std


# ------------------------------------------------------------------------------ networks


class ValueNet(nn.Module):
    """V(s) on the coordinates ``indices`` of its input, standardised by the demo statistics."""

    def __init__(self, in_dim: int, indices: list[int], config: VINSConfig):
        super().__init__()
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))
        self.standardize = Standardizer(len(indices))
        self.net = MLP(len(indices), 1, config.value_layers, config.value_units, config.value_act, config.value_norm)
        self.in_dim = in_dim

    def select(self, x: Tensor) -> Tensor:
        """Full inputs ``(..., in_dim)`` → V's coordinates ``(..., d)``."""
        return x.index_select(-1, self.indices)

    def forward(self, selected: Tensor) -> Tensor:
        """``(..., d)`` (already selected) → ``(...)``."""
        return self.net(self.standardize(selected)).squeeze(-1)

    def forward_full(self, x: Tensor) -> Tensor:
        return self(self.select(x))


class Shooting(nn.Module):
    """The shooting spread α the deployed policy uses: chosen on held-out demo states at every
    evaluation and kept (checkpointed, model-selected) together with the V it was chosen for."""

    def __init__(self, alpha: float):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(float(alpha)))


# ------------------------------------------------------------------------------ what V and π_BC read


class ObservationInputs:
    """With the ``dynamics`` model (the paper): V and π_BC read raw observations, and a
    successor predicted by M is decoded back to an observation for V."""

    latent = False

    def __init__(self, world_model, spec: DataSpec):
        if spec.pixels:
            raise UserError(f"vins on pixel observations {spec.obs_shape} needs a latent world model: pass --model "
                            "from 'wmil train-model --model rssm' (or gaussian_rssm)")
        self.world_model, self.in_shape = world_model, spec.obs_shape

    def demo_inputs(self, expert: Dataset, latents: ExpertLatents) -> Tensor:
        """``(N, D)``: every expert observation, episodes laid end to end."""
        obs = expert.aligned.obs
        if obs is None:  # read from disk (above the memory budget): the demos are few, read them whole
            obs = np.concatenate([expert.episode(i).observations for i in range(len(expert))])
        return torch.from_numpy(obs).to(latents.features.device)

    def of_state(self, state: State, obs: Optional[Tensor] = None) -> Tensor:
        """What V and π_BC read of a model state (the observation itself when it is at hand)."""
        return obs if obs is not None else self.world_model.decode(self.world_model.features(state))


class LatentInputs:
    """With an ``rssm``/``gaussian_rssm`` model (negative sampling in the representation
    space): V and π_BC read the model's features [h, z] of posterior or predicted states."""

    latent = True

    def __init__(self, world_model, spec: DataSpec):
        self.world_model, self.in_shape = world_model, (world_model.feature_dim,)

    def demo_inputs(self, expert: Dataset, latents: ExpertLatents) -> Tensor:
        return latents.features

    def of_state(self, state: State, obs: Optional[Tensor] = None) -> Tensor:
        return self.world_model.features(state)


def vins_inputs(world_model, spec: DataSpec) -> ObservationInputs | LatentInputs:
    """What V and π_BC read, chosen once from the kind of world model."""
    from wmil.world_models.dynamics import Dynamics

    return ObservationInputs(world_model, spec) if isinstance(world_model, Dynamics) else LatentInputs(world_model, spec)


def vins_actions(world_model, bc: BCNet, value: ValueNet, state: State, bc_input: Tensor, spec: DataSpec,
                 config: VINSConfig, inputs: ObservationInputs | LatentInputs, deterministic: bool = True,
                 alpha: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """The VINS policy for a batch: ``state (B,)`` is the world model's state of the current
    observation, ``bc_input (B, ...)`` what π_BC and V read of it. Returns ``(action (B, A),
    value (B,))``: the candidate with the largest V(M(s, a)) and that value — or π_BC's action
    where V(s) ≥ ``config.goal_value`` (the goal is reached) or the spread ``alpha`` (default
    ``config.shooting_alpha``) is 0."""
    B = state.batch_shape[0]
    A = spec.action_dim
    alpha = config.shooting_alpha if alpha is None else float(alpha)
    center = bc.act(bc_input, deterministic)                                        # (B, A)
    if spec.discrete:
        candidates = torch.eye(A, device=bc_input.device).expand(B, A, A)          # (B, A, A)
    else:
        if alpha == 0:
            return center, value.forward_full(bc_input)
        if config.shooting_center == "zero":
            center_of_search = torch.zeros(B, A, device=bc_input.device)
        else:
            center_of_search = center
        bounds = bc.head.bounds
        noise = torch.rand(B, config.shooting_samples, A, device=bc_input.device) * 2 - 1
        candidates = shooting_candidates(center_of_search, noise, alpha * bounds.half_range, bounds.low, bounds.high)
    k = candidates.shape[1]
    repeated = state.map(lambda x: x.unsqueeze(1).expand(B, k, x.shape[-1]).reshape(B * k, x.shape[-1]))
    following = world_model.imagine_step(repeated, candidates.reshape(B * k, A))
    values = value.forward_full(inputs.of_state(following)).reshape(B, k)
    action, best = select_best(candidates, values), values.max(-1).values
    if config.goal_value is not None:
        at_goal = value.forward_full(bc_input) >= config.goal_value                # (B,)
        action = torch.where(at_goal.unsqueeze(-1), center, action)
    return action, best


# ------------------------------------------------------------------------------ deployment


class VINSPolicy(FilteringPolicy):
    """Acts by random shooting on V(M(s, a)) around π_BC(s) with the kept spread α; keeps the
    world model's state (the posterior filter for latent models; the normalised observation
    for ``dynamics``)."""

    def __init__(self, world_model, bc: BCNet, value: ValueNet, shooting: Shooting, spec: DataSpec,
                 config: VINSConfig):
        super().__init__(world_model, spec)
        self.bc, self.value, self.shooting, self.config = bc, value, shooting, config
        self.inputs = vins_inputs(world_model, spec)

    def decide(self, obs: Tensor, first: Tensor, deterministic: bool) -> Tensor:
        """The best of the shooting candidates (random either way); ``deterministic`` centres
        them on π_BC's mean action rather than a sample of it."""
        obs_t = obs
        state = self.filter(obs_t, first)
        action, _ = vins_actions(self.world_model, self.bc, self.value, state, self.inputs.of_state(state, obs_t),
                                 self.spec, self.config, self.inputs, deterministic, float(self.shooting.alpha))
        return self.taken(action)


# ------------------------------------------------------------------------------ offline metrics


@torch.no_grad()
def shooting_agreement(world_model, bc: BCNet, value: ValueNet, expert: ExpertLatents, demo_inputs: Tensor,
                       spec: DataSpec, config: VINSConfig, inputs: ObservationInputs | LatentInputs,
                       rows: Optional[np.ndarray] = None, alpha: Optional[float] = None) -> dict:
    """How well the VINS policy (spread ``alpha``) reproduces the expert's actions on demo
    states: ``eval/vins_action_mse`` (continuous) or ``eval/vins_action_accuracy`` (repeatable:
    it draws its shooting noise from a fixed seed and leaves the global RNG untouched)."""
    if rows is None:
        rows = np.random.default_rng(0).permutation(expert.action_rows)[:config.eval_states]
    if len(rows) == 0:
        return {}
    index = torch.as_tensor(rows, device=demo_inputs.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        action, _ = vins_actions(world_model, bc, value, expert.states[index], demo_inputs[index], spec, config,
                                 inputs, alpha=alpha)
    target = expert.action[index]
    if spec.discrete:
        return {"eval/vins_action_accuracy": float((action.argmax(-1) == target.argmax(-1)).float().mean())}
    return {"eval/vins_action_mse": float((action - target).pow(2).mean())}


@torch.no_grad()
def expert_preference(world_model, value: ValueNet, expert: ExpertLatents, spec: DataSpec, config: VINSConfig,
                      inputs: ObservationInputs | LatentInputs, rows: np.ndarray, alpha: Optional[float] = None) -> dict:
    """``eval/expert_preferred``: how often V(M(s, a_E)) > V(M(s, a')) on demo states, with a'
    the expert action moved by α·ξ and clipped to the action bounds, exactly as shooting moves
    and clips its candidates (continuous; α = ``alpha``, default ``config.shooting_alpha``), or
    another action (discrete). 0.5 is chance: the shooting step can only improve on π_BC where
    V ranks the expert's successor above its neighbours' (repeatable: fixed noise seed)."""
    if len(rows) == 0:
        return {}
    index = torch.as_tensor(rows, device=expert.features.device)
    state, action = expert.states[index], expert.action[index]
    generator = torch.Generator(device="cpu").manual_seed(1)
    if spec.discrete:
        shift = torch.randint(1, spec.action_dim, (len(rows),), generator=generator).to(action.device)
        other = torch.nn.functional.one_hot((action.argmax(-1) + shift) % spec.action_dim, spec.action_dim)
        other = other.to(action.dtype)
    else:
        alpha = config.shooting_alpha if alpha is None else alpha
        noise = (torch.rand(action.shape, generator=generator) * 2 - 1).to(action.device)   # (B, A)
        bounds = ActionBounds(spec).to(action.device)
        other = shooting_candidates(action, noise.unsqueeze(1), alpha * bounds.half_range, bounds.low,
                                    bounds.high).squeeze(1)

    def successor_value(a: Tensor) -> Tensor:
        return value.forward_full(inputs.of_state(world_model.imagine_step(state, a)))

    return {"eval/expert_preferred": float((successor_value(action) > successor_value(other)).float().mean())}


def parse_alphas(text: str) -> list[float]:
    """``alpha_grid`` → its α values (a one-line UserError for anything but numbers ≥ 0)."""
    try:
        values = [float(part) for part in str(text).replace(" ", "").split(",") if part]
    except ValueError:
        values = [-1.0]
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"config field 'alpha_grid' = {text!r}: write spreads ≥ 0 separated by commas, "
                        "e.g. '0,0.05,0.1'")
    return values


# ------------------------------------------------------------------------------ algorithm


class VINS(Learner):
    """VINS trainer: π_BC, V_φ with TD + negative sampling, M from the world model."""

    name = "vins"
    config_cls = VINSConfig
    progress_keys = ("loss/td", "loss/ns", "eval/value_step_gain", "eval/shooting_alpha")
    metric_keys = ("loss/td", "loss/ns", "loss/value", "loss/bc")
    data_parallel = True  # π_BC's and V's minibatches are sharded global draws; their noise is per process

    def __init__(self, world_model, expert: Dataset, config: VINSConfig, device: torch.device):
        if world_model is None:
            raise UserError("--algo vins needs --model RUN: a 'dynamics' world model (vector observations) or an "
                            "'rssm'/'gaussian_rssm' one (wmil train-model --model ...)")
        super().__init__(world_model, expert, config, device)
        self.spec = expert.spec
        self.inputs = vins_inputs(world_model, self.spec)
        if self.inputs.latent and (config.state_indices.strip() or config.perturb_indices.strip()):
            raise UserError("config fields 'state_indices'/'perturb_indices' select observation coordinates; with a "
                            f"latent world model ({type(world_model).__name__}) V reads its features: leave them empty")
        self.alphas = parse_alphas(config.alpha_grid)
        self.expert = ExpertLatents.encode(world_model, expert, device)
        self.demo_inputs = self.inputs.demo_inputs(expert, self.expert)
        full_dim = self.demo_inputs.shape[-1]

        # --- Held-out episodes (π_BC's validation episodes): neither π_BC nor V trains on them.
        train, val = split_demos(expert, config)
        position = {int(e): p for p, e in enumerate(expert.episode_ids)}
        held_out = [position[int(e)] for e in val.episode_ids]
        held_rows = np.zeros(int(self.expert.n_obs.sum()), bool)                   # (N,) every observation
        for e in held_out:
            held_rows[self.expert.offsets[e]:self.expert.offsets[e] + self.expert.n_obs[e]] = True

        # --- V's transitions (training episodes) and the held-out ones that check and select V.
        indices = parse_indices(config.state_indices, full_dim, "state_indices")
        groups = parse_index_groups(config.perturb_indices, full_dim, "perturb_indices") \
            if config.perturb_indices.strip() else [indices]
        if not set().union(*groups) <= set(indices):
            raise UserError(f"config field 'perturb_indices' = {config.perturb_indices!r} must lie within "
                            f"state_indices {indices}")
        self.terminal = self._terminal_rule(expert)
        successes = _successes(expert) if self.terminal == "success" else None
        is_terminal = self.expert.is_terminal.cpu().numpy()
        rows, done = value_transitions(self.expert.n_obs, self.expert.offsets, is_terminal, self.terminal, successes)
        steps = steps_to_goal(rows, done)
        goals = goal_rows(self.expert.n_obs, self.expert.offsets, is_terminal, self.terminal, successes)
        trained = ~held_rows[rows]
        if not trained.any():
            raise UserError("vins: no expert transitions left to train V on after holding out validation episodes; "
                            "lower validation_fraction or add demos")
        self.rows, self.done = rows[trained], torch.as_tensor(done[trained], device=device)
        self.held = rows[~trained], torch.as_tensor(done[~trained], device=device), \
            torch.as_tensor(steps[~trained], dtype=torch.float32, device=device)
        self.goals, self.held_goals = goals[~held_rows[goals]], goals[held_rows[goals]]

        self.value = self.add_network("value", ValueNet(full_dim, indices, config), lr=config.value_lr)
        self.shooting = self.add_network("shooting", Shooting(config.shooting_alpha))
        self.value_states = self.value.select(self.demo_inputs.float())              # (N, d)
        train_rows = np.flatnonzero(self.expert.action_mask.cpu().numpy() & ~held_rows)
        demo = self.value_states[torch.as_tensor(train_rows, device=device)]
        std = demo.std(0, unbiased=False) if len(demo) > 1 else torch.ones(len(indices), device=device)
        self.value.standardize.set(demo.mean(0), value_input_scale(std, config.value_std_floor))
        if config.ns_scale == "step":
            moves = self.value_states[torch.as_tensor(self.rows + 1, device=device)] - \
                self.value_states[torch.as_tensor(self.rows, device=device)]
            sigma = moves.pow(2).mean(0).sqrt()
        else:
            sigma = std
        #: √ρ·σ on the coordinates of each perturbation group ``(G, d)``; one group per sample.
        masks = torch.tensor([[float(i in set(g)) for i in indices] for g in groups], device=device)
        self.noise_std = math.sqrt(config.ns_rho) * sigma * masks
        self.distance_scale = sigma.clamp(min=1e-6) if config.ns_normalized_distance else torch.ones_like(sigma)
        self.target = self.add_network("target", copy.deepcopy(self.value).requires_grad_(False))
        if config.value_selection != "last":
            self.add_selection("value", Selection({"value": self.value, "shooting": self.shooting},
                                                  higher_is_better=config.value_selection == "preference"))

        # --- π_BC: observations (dynamics) or features (latent), held-out episodes for selection.
        def feature_pairs(view: Dataset) -> Demos:
            rows = torch.as_tensor(self.expert.rows_of([position[int(e)] for e in view.episode_ids]), device=device)
            return Demos(self.demo_inputs[rows], self.expert.action[rows])

        if self.inputs.latent:
            bc_train, bc_val = feature_pairs(train), feature_pairs(val)
        else:
            bc_train = demo_pairs(train)
            bc_val = demo_pairs(val) if len(val) else Demos(bc_train.inputs[:0], bc_train.action[:0])
        self.bc = self.add_component("bc", BCTrainer(BCNet(self.inputs.in_shape, self.spec, config), bc_train, bc_val,
                                                     config, self.spec, device, name="bc"))
        #: Held-out demo states (action rows) that choose α and score V; empty with one demo episode.
        self.selection_rows = np.random.default_rng(0).permutation(
            self.expert.rows_of(held_out) if held_out else np.zeros(0, np.int64))[:config.selection_states]
        self.seed_rng()

    def _terminal_rule(self, expert: Dataset) -> str:
        if self.config.terminal != "auto":
            return self.config.terminal
        return "success" if _successes(expert) is not None else "dataset"

    # ---------------------------------------------------------------- training
    def value_losses(self, state: Tensor, next_state: Tensor, done: Tensor, u: Optional[Tensor],
                     noise_std: Tensor, noise: Tensor) -> tuple[dict[str, Tensor], dict[str, float]]:
        """L_td and L_ns of a batch of V-space transitions ``(B, d)``; ``u (B,)`` the
        interpolation fractions (None: no augmentation); ``noise_std (B, d)`` √ρ·σ on each
        sample's perturbation group (zero elsewhere), ``noise (B, d)`` standard normal."""
        cfg = self.config
        reward = torch.full_like(done, STEP_REWARD, dtype=state.dtype)
        if u is not None:
            state, reward, discount = interpolate_transitions(state, next_state, u, reward, cfg.gamma)
        else:
            discount = torch.full_like(reward, cfg.gamma)
        with torch.no_grad():
            target = td_target(reward, self.target(next_state), done, discount)
        value = self.value(state)
        perturbed = perturb(state, noise_std, noise)
        value_perturbed = self.value(perturbed)
        distance = torch.linalg.vector_norm((state - perturbed) / self.distance_scale, dim=-1)
        losses = {"td": (value - target).pow(2).mean(),
                  "ns": negative_sampling_loss(value, value_perturbed, distance, cfg.ns_lambda).mean()}
        metrics = {"value/mean": float(value.detach().mean()), "value/target": float(target.mean()),
                   "value/ns_gap": float((value - value_perturbed).detach().mean()),
                   "value/ns_distance": float(distance.mean())}
        return losses, metrics

    def perturbation(self, count: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """``(noise_std, noise)``, both ``(count, d)``, for :func:`perturb`: each sample perturbs
        one group of ``perturb_indices``, drawn uniformly."""
        group = torch.randint(len(self.noise_std), (count,), generator=generator).to(self.device)
        return self.noise_std[group], torch.randn(count, self.noise_std.shape[-1], generator=generator).to(self.device)

    def batch_counts(self) -> dict[str, int]:
        return {"batch_size": self.config.batch_size}

    @classmethod
    def parallel_refusal(cls, config: VINSConfig) -> Optional[str]:
        return patience_refusal(config)

    def update(self, step: int) -> dict:
        cfg = self.config
        metrics = self.bc.update(self.rng, self.shard)
        pick = self.shard(self.rng.integers(len(self.rows), size=cfg.batch_size))
        rows, next_rows = self.expert.transitions(self.rows[pick])
        state, next_state = self.value_states[rows], self.value_states[next_rows]
        u = torch.rand(len(pick), device=self.device) if cfg.interpolate else None
        losses, value_metrics = self.value_losses(state, next_state, self.done[torch.as_tensor(pick, device=self.device)],
                                                  u, *self.perturbation(len(pick)))
        loss = losses["td"] + cfg.ns_weight * losses["ns"]
        if cfg.goal_weight > 0 and len(self.goals):
            goals = self.goals[self.shard(self.rng.integers(len(self.goals), size=cfg.batch_size))]
            goals = torch.as_tensor(goals, device=self.device)
            losses["goal"] = self.value(self.value_states[goals]).pow(2).mean()
            loss = loss + cfg.goal_weight * losses["goal"]
        self.step("value", loss)
        update_target(self.target, self.value, step, cfg.target_every, cfg.target_tau)
        metrics.update({f"loss/{k}": float(v.detach()) for k, v in losses.items()})
        metrics.update({"loss/value": float(loss.detach()), **value_metrics})
        return metrics

    # ---------------------------------------------------------------- offline metrics
    @torch.no_grad()
    def value_ranking(self, count: Optional[int] = None) -> dict[str, float]:
        """How often V ranks a demo state above its negative sample (``ns_rank``) and a demo
        state's successor above it (``td_order``), on a fixed set of V's training transitions."""
        count = count or self.config.eval_states
        generator = torch.Generator(device="cpu").manual_seed(0)
        pick = torch.randperm(len(self.rows), generator=generator)[:count]
        rows, next_rows = self.expert.transitions(self.rows[pick.numpy()])
        state, next_state = self.value_states[rows], self.value_states[next_rows]
        value, value_perturbed = self.value(state), self.value(perturb(state, *self.perturbation(len(pick), generator)))
        not_done = ~self.done[pick.to(self.device)]
        order = (self.value(next_state) > value)[not_done].float()
        return {"eval/ns_rank": float((value > value_perturbed).float().mean()),
                "eval/td_order": float(order.mean()) if len(order) else float("nan"),
                "eval/value_demo": float(value.mean())}

    @torch.no_grad()
    def value_check(self) -> dict[str, float]:
        """V's convergence on the held-out transitions (episodes V never trained on): the mean
        V(s′) − V(s) against its converged value γ^(n−1) (n steps before the goal), the mean
        |V(s) − V*(s)|, and the TD error ((r + γV(s′)) − V(s))² that ``value_selection='td'``
        minimises; where an episode never reaches its goal only the TD error is defined."""
        held, done, steps = self.held
        if len(held) == 0:
            return {}
        rows, next_rows = self.expert.transitions(held)
        value, next_value = self.value(self.value_states[rows]), self.value(self.value_states[next_rows])
        target = td_target(torch.full_like(value, STEP_REWARD), next_value, done, self.config.gamma)
        out = {"eval/value_td_error": float((target - value).pow(2).mean())}
        known = torch.isfinite(steps)
        if known.any():
            gain = torch.where(done, -value, next_value - value)[known]     # V(goal) = 0 by definition
            out.update({"eval/value_step_gain": float(gain.mean()),
                        "eval/value_step_gain_expected": float(expected_step_gain(steps[known], self.config.gamma).mean()),
                        "eval/value_error": float((value[known] - optimal_value(steps[known], self.config.gamma)).abs().mean())})
        return out

    @torch.no_grad()
    def goal_check(self) -> dict[str, float]:
        """How the goal rule reads the held-out episodes: the fraction of their goal observations
        where V ≥ ``goal_value`` (π_BC acts) and of their states before the goal where it does so
        too early."""
        if self.config.goal_value is None or len(self.held[0]) == 0:
            return {}
        before = self.value(self.value_states[torch.as_tensor(self.held[0], device=self.device)])
        out = {"eval/goal_early": float((before >= self.config.goal_value).float().mean())}
        if len(self.held_goals):
            at = self.value(self.value_states[torch.as_tensor(self.held_goals, device=self.device)])
            out["eval/goal_detected"] = float((at >= self.config.goal_value).float().mean())
        return out

    def choose_alpha(self, bc: BCNet) -> tuple[float, dict[str, float]]:
        """The α of ``alpha_grid`` whose VINS actions agree best with the expert's on the
        held-out demo states (ties: the smallest α), and the agreement at each α."""
        key = "eval/vins_action_accuracy" if self.spec.discrete else "eval/vins_action_mse"
        if self.spec.discrete or not self.alphas or len(self.selection_rows) == 0:
            alpha = float(self.shooting.alpha)
            found = shooting_agreement(self.world_model, bc, self.value, self.expert, self.demo_inputs, self.spec,
                                       self.config, self.inputs, self.selection_rows if len(self.selection_rows)
                                       else None, alpha)
            return alpha, found
        scores = {a: shooting_agreement(self.world_model, bc, self.value, self.expert, self.demo_inputs, self.spec,
                                        self.config, self.inputs, self.selection_rows, a)[key]
                  for a in sorted(self.alphas)}
        alpha = min(scores, key=lambda a: (scores[a], a))
        metrics = {key: scores[alpha], **{f"{key}@{a:g}": v for a, v in scores.items()}}
        return alpha, metrics

    def evaluate(self) -> dict:
        out = self.bc.evaluate(self.steps_done)
        out.update(self.value_ranking())
        out.update(self.value_check())
        out.update(self.goal_check())
        alpha, agreement = self.choose_alpha(self.bc.best_net())
        self.shooting.alpha.fill_(alpha)
        out.update(agreement)
        out["eval/shooting_alpha"] = alpha
        # V's ranking at the deployed spread (at shooting_alpha where π_BC alone is deployed: at
        # α = 0 every neighbour is the expert's own action).
        out.update(expert_preference(self.world_model, self.value, self.expert, self.spec, self.config, self.inputs,
                                     self.selection_rows, alpha or self.config.shooting_alpha))
        selection = self.selections.get("value")
        if selection is not None:
            key = {"action": "eval/vins_action_mse" if not self.spec.discrete else "eval/vins_action_accuracy",
                   "td": "eval/value_td_error", "preference": "eval/expert_preferred"}[self.config.value_selection]
            if self.spec.discrete and self.config.value_selection == "action":
                score = -out[key] if key in out else None    # accuracy: higher is better, the selection minimises
            else:
                score = out.get(key)
            # Without held-out episodes (a single demo) there is nothing to select on: keep the newest.
            selection.offer(0.0 if score is None else score, self.steps_done, force=score is None)
            out["eval/best_value_step"] = float(selection.best_step)
            if self.config.value_selection == "preference":
                out["eval/best_expert_preferred"] = selection.best_score
        return out

    # ---------------------------------------------------------------- deployment
    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config: VINSConfig) -> dict[str, nn.Module]:
        inputs = vins_inputs(world_model, spec)
        full_dim = inputs.in_shape[0]
        return {"bc": BCNet(inputs.in_shape, spec, config),
                "value": ValueNet(full_dim, parse_indices(config.state_indices, full_dim, "state_indices"), config),
                "shooting": Shooting(config.shooting_alpha)}

    @classmethod
    def make_policy(cls, world_model, networks: dict[str, nn.Module], spec: DataSpec, config: VINSConfig) -> VINSPolicy:
        return VINSPolicy(world_model, networks["bc"], networks["value"], networks["shooting"], spec, config)


def _successes(expert: Dataset) -> Optional[list[np.ndarray]]:
    """Each episode's ``is_success`` per observation, or None when any episode lacks it."""
    out = []
    for i in range(len(expert)):
        values = expert.episode(i).infos.get("is_success")
        if values is None:
            return None
        out.append(np.asarray(values, dtype=np.float32).reshape(-1))
    return out


__all__ = ["VINS", "VINSConfig", "VINSPolicy", "ValueNet", "Shooting", "td_target", "interpolate_transitions",
           "perturb", "negative_sampling_loss", "shooting_candidates", "select_best", "value_transitions",
           "parse_indices", "value_input_scale", "goal_rows", "steps_to_goal", "optimal_value", "expected_step_gain",
           "expert_preference", "vins_actions", "vins_inputs"]
