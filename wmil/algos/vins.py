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
  fraction that remains, which makes u = 0 the plain TD target.)
* the negative-sampling loss that makes V conservatively extrapolated (eq. 4.2):

      L_ns = E (V_φ(s) − λ‖s − s̃‖ − V_φ(s̃))²,   s̃ = s + N(0, ρΣ)

  with Σ the per-coordinate variance of the demo states; L = L_td + μ·L_ns. The distance
  is measured in units of each coordinate's demo std (``ns_normalized_distance``) so λ means
  the same on every task; set it False for the paper's raw Euclidean norm.
* a BC policy π_BC on the full observation (:mod:`wmil.algos.bc`: same network, loss and
  held-out model selection as the BC baseline);
* the dynamics model M(s, a): the ``dynamics`` world model of ``--model`` (trained by
  ``wmil train-model --model dynamics`` with the paper's L2-norm loss). Offline adaptation: M
  is trained on the whole world dataset, not only on the demos, and stays fixed here.

The deployed policy is Algorithm 2's ``POLICY(s)`` by random shooting: k actions
a_BC + α·ξ_i with ξ_i ~ U[−1, 1]^m (α in half-ranges of the action space, i.e. the paper's α
for actions in [−1, 1]; option ``shooting_center='zero'`` is the paper's option 2, a = 0),
clipped to the bounds, and the one with the largest V(M(s, a_i)). Discrete action spaces
(outside the paper) score every action. ``state_indices`` restricts V (and its perturbations,
``perturb_indices``) to a subset of observation coordinates, as the paper does on Fetch
(gripper and object positions); M still predicts the whole observation.

Latent variant (the extension the paper's conclusion suggests, "negative sampling in the
representation space"): with an ``rssm``/``gaussian_rssm`` world model, states are the model's
features [h, z] of the posterior of each demo observation, s̃ perturbs those features with
their own per-coordinate variance, π_BC acts on features, M is the model's prior step
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
from wmil.algos.supervised import BCConfig, BCNet, BCTrainer, Demos, demo_pairs, split_demos
from wmil.config import Activation, DiscountConfig, NonNegFloat, NonNegInt, PosFloat, PosInt, TargetConfig
from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.expert import ExpertLatents
from wmil.nets import MLP, Standardizer, update_target
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
    """ρ: perturbation covariance ρΣ, Σ the per-coordinate variance of the demo states."""
    ns_normalized_distance: bool = True
    """Measure ‖s − s̃‖ in units of each coordinate's demo std (False: the raw norm)."""
    interpolate: bool = True
    """Augment V's transitions by linear interpolation between consecutive demo states."""
    terminal: Literal["auto", "dataset", "success", "last", "none"] = "auto"
    """Where the goal (a terminal of value 0) is: 'dataset' terminations, first 'success' (info is_success; later steps dropped), 'last' observation of every demo, 'none', or 'auto' (success if recorded, else dataset)."""
    state_indices: str = ""
    """Observation coordinates V sees, e.g. '3,4,5' or '3:9' (empty: all)."""
    perturb_indices: str = ""
    """Observation coordinates negative sampling perturbs, within state_indices (empty: all of them)."""
    shooting_samples: PosInt = 100
    """k: random-shooting candidates per action (continuous actions)."""
    shooting_alpha: NonNegFloat = 0.2
    """α: candidate spread, in half-ranges of the action space."""
    shooting_center: Literal["bc", "zero"] = "bc"
    """'bc': search around π_BC(s) (the paper's option 1); 'zero': around a = 0 (option 2)."""
    eval_states: PosInt = 256
    """Demo states used for the offline value and action metrics."""
    value_selection: Literal["preference", "last"] = "preference"
    """Which V the policy keeps: 'preference' (the highest eval/expert_preferred on held-out demo episodes, model selection as for π_BC) or 'last'."""
    selection_states: PosInt = 1024
    """Held-out demo states that score eval/expert_preferred."""

    DEFAULTS: ClassVar = dict(
        **BCConfig.DEFAULTS,
        gamma=0.99,                       # the TD target's discount (the paper's sparse −1 reward)
        target_every=0, target_tau=0.01,  # a Polyak target V, as the paper's
    )
    PRESETS: ClassVar = {
        "tiny": dict(layers=1, units=32, batch_size=32, cnn_depth=4, value_units=32, shooting_samples=8,
                     eval_states=32),
        "small": dict(),
        "paper": dict(layers=3, units=256, continuous_loss="mse", value_layers=1, value_units=256),
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


def value_input_scale(std: Tensor, floor: float) -> Tensor:
    """The per-coordinate scale that normalises V's inputs: the demo std, floored at ``floor`` ×
    the median std (and 1e-3). A coordinate that barely moves in the demos (FetchPush: the
    block's height, std 1.7 mm against ~9 cm for x and y) would otherwise be stretched ~50×,
    and V's choice between shooting candidates would follow the model's sub-millimetre errors
    on it rather than the gripper's motion (measured: |∂V/∂z_block| ≈ 2,100 per metre against
    10–50 for the gripper, and VINS at 5 % success where its own π_BC alone scores 28 %)."""
    return std.clamp(min=max(1e-3, floor * float(std.median()))) if std.numel() else std


def parse_indices(text: str, dim: int, field: str) -> list[int]:
    """``'3,4,5'`` / ``'3:6,9'`` → sorted coordinates in ``0..dim-1`` (empty text: all)."""
    if not str(text).strip():
        return list(range(dim))
    out: set[int] = set()
    try:
        for part in str(text).replace(" ", "").split(","):
            if ":" in part:
                a, b = part.split(":")
                out.update(range(int(a), int(b)))
            elif part:
                out.add(int(part))
    except ValueError:
        raise UserError(f"config field {field!r}: cannot read {text!r}; write coordinates like '3,4,5' or '3:6'") from None
    if not out or min(out) < 0 or max(out) >= dim:
        raise UserError(f"config field {field!r} = {text!r}: coordinates must lie in 0..{dim - 1} "
                        f"(the observation has {dim})")
    return sorted(out)


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
        return torch.from_numpy(expert.aligned.obs).to(latents.features.device)

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
                 config: VINSConfig, inputs: ObservationInputs | LatentInputs,
                 deterministic: bool = True) -> tuple[Tensor, Tensor]:
    """The VINS policy for a batch: ``state (B,)`` is the world model's state of the current
    observation, ``bc_input (B, ...)`` what π_BC reads. Returns ``(action (B, A), value (B,))``:
    the candidate with the largest V(M(s, a)) and that value."""
    B = state.batch_shape[0]
    A = spec.action_dim
    if spec.discrete:
        candidates = torch.eye(A, device=bc_input.device).expand(B, A, A)          # (B, A, A)
    else:
        if config.shooting_center == "bc":
            center = bc.act(bc_input, deterministic)
        else:
            center = torch.zeros(B, A, device=bc_input.device)
        bounds = bc.head.bounds
        noise = torch.rand(B, config.shooting_samples, A, device=bc_input.device) * 2 - 1
        candidates = shooting_candidates(center, noise, config.shooting_alpha * bounds.half_range, bounds.low,
                                         bounds.high)
    k = candidates.shape[1]
    repeated = state.map(lambda x: x.unsqueeze(1).expand(B, k, x.shape[-1]).reshape(B * k, x.shape[-1]))
    following = world_model.imagine_step(repeated, candidates.reshape(B * k, A))
    values = value.forward_full(inputs.of_state(following)).reshape(B, k)
    return select_best(candidates, values), values.max(-1).values


# ------------------------------------------------------------------------------ deployment


class VINSPolicy(FilteringPolicy):
    """Acts by random shooting on V(M(s, a)) around π_BC(s); keeps the world model's state
    (the posterior filter for latent models; the normalised observation for ``dynamics``)."""

    def __init__(self, world_model, bc: BCNet, value: ValueNet, spec: DataSpec, config: VINSConfig):
        super().__init__(world_model, spec)
        self.bc, self.value, self.config = bc, value, config
        self.inputs = vins_inputs(world_model, spec)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = True):
        """The best of the shooting candidates (random either way); ``deterministic`` centres
        them on π_BC's mean action rather than a sample of it."""
        obs_t = self._obs(obs)
        state = self.filter(obs_t)
        action, _ = vins_actions(self.world_model, self.bc, self.value, state, self.inputs.of_state(state, obs_t),
                                 self.spec, self.config, self.inputs, deterministic)
        return self.taken(action)


# ------------------------------------------------------------------------------ offline metrics


@torch.no_grad()
def shooting_agreement(world_model, bc: BCNet, value: ValueNet, expert: ExpertLatents, demo_inputs: Tensor,
                       spec: DataSpec, config: VINSConfig, inputs: ObservationInputs | LatentInputs,
                       rows: Optional[np.ndarray] = None) -> dict:
    """How well the VINS policy reproduces the expert's actions on demo states (repeatable:
    it draws its shooting noise from a fixed seed and leaves the global RNG untouched)."""
    if rows is None:
        rows = np.random.default_rng(0).permutation(expert.action_rows)[:config.eval_states]
    if len(rows) == 0:
        return {}
    index = torch.as_tensor(rows, device=demo_inputs.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        action, _ = vins_actions(world_model, bc, value, expert.states[index], demo_inputs[index], spec, config,
                                 inputs)
    target = expert.action[index]
    if spec.discrete:
        return {"eval/vins_action_accuracy": float((action.argmax(-1) == target.argmax(-1)).float().mean())}
    return {"eval/vins_action_mse": float((action - target).pow(2).mean())}


@torch.no_grad()
def expert_preference(world_model, value: ValueNet, expert: ExpertLatents, spec: DataSpec, config: VINSConfig,
                      inputs: ObservationInputs | LatentInputs, rows: np.ndarray) -> dict:
    """``eval/expert_preferred``: how often V(M(s, a_E)) > V(M(s, a')) on demo states, with a'
    the expert action moved by α·ξ (continuous; the shooting spread) or another action
    (discrete). 0.5 is chance: the shooting step can only improve on π_BC where V ranks the
    expert's successor above its neighbours' (repeatable: fixed noise seed)."""
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
        noise = (torch.rand(action.shape, generator=generator) * 2 - 1).to(action.device)
        half = torch.as_tensor(np.asarray(spec.action_high) - np.asarray(spec.action_low), dtype=action.dtype,
                               device=action.device) / 2
        half = torch.where(torch.isfinite(half), half, torch.ones_like(half))
        other = action + config.shooting_alpha * half * noise

    def successor_value(a: Tensor) -> Tensor:
        return value.forward_full(inputs.of_state(world_model.imagine_step(state, a)))

    return {"eval/expert_preferred": float((successor_value(action) > successor_value(other)).float().mean())}


# ------------------------------------------------------------------------------ algorithm


class VINS(Learner):
    """VINS trainer: π_BC, V_φ with TD + negative sampling, M from the world model."""

    name = "vins"
    config_cls = VINSConfig
    progress_keys = ("loss/td", "loss/ns", "eval/ns_rank", "eval/expert_preferred")
    metric_keys = ("loss/td", "loss/ns", "loss/value", "loss/bc")

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
        self.expert = ExpertLatents.encode(world_model, expert, device)
        self.demo_inputs = self.inputs.demo_inputs(expert, self.expert)
        full_dim = self.demo_inputs.shape[-1]

        # --- V's transitions and statistics.
        indices = parse_indices(config.state_indices, full_dim, "state_indices")
        perturbed = parse_indices(config.perturb_indices, full_dim, "perturb_indices") if config.perturb_indices.strip() \
            else indices
        if not set(perturbed) <= set(indices):
            raise UserError(f"config field 'perturb_indices' = {config.perturb_indices!r} must lie within "
                            f"state_indices {indices}")
        self.terminal = self._terminal_rule(expert)
        successes = _successes(expert) if self.terminal == "success" else None
        is_terminal = self.expert.is_terminal.cpu().numpy()
        rows, done = value_transitions(self.expert.n_obs, self.expert.offsets, is_terminal, self.terminal, successes)
        self.rows, self.done = rows, torch.as_tensor(done, device=device)
        self.goals = goal_rows(self.expert.n_obs, self.expert.offsets, is_terminal, self.terminal, successes)
        self.value = self.add_network("value", ValueNet(full_dim, indices, config), lr=config.value_lr)
        self.value_states = self.value.select(self.demo_inputs.float())              # (N, d)
        demo = self.value_states[torch.as_tensor(self.expert.action_rows, device=device)]
        std = demo.std(0, unbiased=False) if len(demo) > 1 else torch.ones(len(indices), device=device)
        self.value.standardize.set(demo.mean(0), value_input_scale(std, config.value_std_floor))
        mask = torch.tensor([i in set(perturbed) for i in indices], dtype=torch.float32, device=device)
        self.noise_std = math.sqrt(config.ns_rho) * std * mask                          # √ρ·σ on perturbed coords
        self.distance_scale = std.clamp(min=1e-6) if config.ns_normalized_distance else torch.ones_like(std)
        self.target = self.add_network("target", copy.deepcopy(self.value).requires_grad_(False))
        if config.value_selection == "preference":
            self.add_selection("value", Selection({"value": self.value}, higher_is_better=True))

        # --- π_BC: observations (dynamics) or features (latent), held-out episodes for selection.
        train, val = split_demos(expert, config)
        position = {int(e): p for p, e in enumerate(expert.episode_ids)}

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
        held_out = [position[int(e)] for e in val.episode_ids]
        self.eval_rows = np.random.default_rng(0).permutation(self.expert.rows_of(held_out) if held_out else
                                                              self.expert.action_rows)
        self.selection_rows = self.eval_rows[:config.selection_states]
        self.eval_rows = self.eval_rows[:config.eval_states]
        self.seed_rng()

    def _terminal_rule(self, expert: Dataset) -> str:
        if self.config.terminal != "auto":
            return self.config.terminal
        return "success" if _successes(expert) is not None else "dataset"

    # ---------------------------------------------------------------- training
    def value_losses(self, state: Tensor, next_state: Tensor, done: Tensor, u: Optional[Tensor],
                     noise: Tensor) -> tuple[dict[str, Tensor], dict[str, float]]:
        """L_td and L_ns of a batch of V-space transitions ``(B, d)``; ``u (B,)`` the
        interpolation fractions (None: no augmentation), ``noise (B, d)`` standard normal."""
        cfg = self.config
        reward = torch.full_like(done, STEP_REWARD, dtype=state.dtype)
        if u is not None:
            state, reward, discount = interpolate_transitions(state, next_state, u, reward, cfg.gamma)
        else:
            discount = torch.full_like(reward, cfg.gamma)
        with torch.no_grad():
            target = td_target(reward, self.target(next_state), done, discount)
        value = self.value(state)
        perturbed = perturb(state, self.noise_std, noise)
        value_perturbed = self.value(perturbed)
        distance = torch.linalg.vector_norm((state - perturbed) / self.distance_scale, dim=-1)
        losses = {"td": (value - target).pow(2).mean(),
                  "ns": negative_sampling_loss(value, value_perturbed, distance, cfg.ns_lambda).mean()}
        metrics = {"value/mean": float(value.detach().mean()), "value/target": float(target.mean()),
                   "value/ns_gap": float((value - value_perturbed).detach().mean()),
                   "value/ns_distance": float(distance.mean())}
        return losses, metrics

    def update(self, step: int) -> dict:
        cfg = self.config
        metrics = self.bc.update(self.rng)
        pick = self.rng.integers(len(self.rows), size=cfg.batch_size)
        rows, next_rows = self.expert.transitions(self.rows[pick])
        state, next_state = self.value_states[rows], self.value_states[next_rows]
        u = torch.rand(len(pick), device=self.device) if cfg.interpolate else None
        noise = torch.randn_like(state)
        losses, value_metrics = self.value_losses(state, next_state, self.done[torch.as_tensor(pick, device=self.device)],
                                                  u, noise)
        loss = losses["td"] + cfg.ns_weight * losses["ns"]
        if cfg.goal_weight > 0 and len(self.goals):
            goals = torch.as_tensor(self.goals[self.rng.integers(len(self.goals), size=cfg.batch_size)], device=self.device)
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
        state's successor above it (``td_order``), on a fixed set of demo transitions."""
        count = count or self.config.eval_states
        generator = torch.Generator(device="cpu").manual_seed(0)
        pick = torch.randperm(len(self.rows), generator=generator)[:count]
        rows, next_rows = self.expert.transitions(self.rows[pick.numpy()])
        state, next_state = self.value_states[rows], self.value_states[next_rows]
        noise = torch.randn(state.shape, generator=generator).to(self.device)
        value, value_perturbed = self.value(state), self.value(perturb(state, self.noise_std, noise))
        not_done = ~self.done[pick.to(self.device)]
        order = (self.value(next_state) > value)[not_done].float()
        return {"eval/ns_rank": float((value > value_perturbed).float().mean()),
                "eval/td_order": float(order.mean()) if len(order) else float("nan"),
                "eval/value_demo": float(value.mean())}

    def evaluate(self) -> dict:
        out = self.bc.evaluate(self.steps_done)
        out.update(self.value_ranking())
        out.update(shooting_agreement(self.world_model, self.bc.net, self.value, self.expert, self.demo_inputs,
                                      self.spec, self.config, self.inputs, self.eval_rows))
        out.update(expert_preference(self.world_model, self.value, self.expert, self.spec, self.config, self.inputs,
                                     self.selection_rows))
        selection = self.selections.get("value")
        if selection is not None and "eval/expert_preferred" in out:
            selection.offer(out["eval/expert_preferred"], self.steps_done)
            out["eval/best_expert_preferred"] = selection.best_score
        return out

    # ---------------------------------------------------------------- deployment
    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config: VINSConfig) -> dict[str, nn.Module]:
        inputs = vins_inputs(world_model, spec)
        full_dim = inputs.in_shape[0]
        return {"bc": BCNet(inputs.in_shape, spec, config),
                "value": ValueNet(full_dim, parse_indices(config.state_indices, full_dim, "state_indices"), config)}

    @classmethod
    def make_policy(cls, world_model, networks: dict[str, nn.Module], spec: DataSpec, config: VINSConfig) -> VINSPolicy:
        return VINSPolicy(world_model, networks["bc"], networks["value"], spec, config)


def _successes(expert: Dataset) -> Optional[list[np.ndarray]]:
    """Each episode's ``is_success`` per observation, or None when any episode lacks it."""
    out = []
    for i in range(len(expert)):
        values = expert.episode(i).infos.get("is_success")
        if values is None:
            return None
        out.append(np.asarray(values, dtype=np.float32).reshape(-1))
    return out


__all__ = ["VINS", "VINSConfig", "VINSPolicy", "ValueNet", "td_target", "interpolate_transitions", "perturb",
           "negative_sampling_loss", "shooting_candidates", "select_best", "value_transitions", "parse_indices",
           "value_input_scale", "goal_rows", "expert_preference", "vins_actions", "vins_inputs"]
