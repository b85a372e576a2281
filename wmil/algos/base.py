"""The learner base of every imitation algorithm, and the algorithm registry.

An algorithm is one file in ``wmil/algos/``: a config dataclass composed from the blocks of
:mod:`wmil.config` (with its paper's departures in ``DEFAULTS`` and its ``PRESETS``) and a
:class:`Learner` subclass that reads top to bottom as its objective — its networks, its losses
or rewards, its ``update``. The base owns everything else:

* the checks that the world model (if any) fits the expert data;
* the networks, their optimisers and their steps (:meth:`Learner.add_network`,
  :meth:`Learner.step`), the seeded NumPy generator (:meth:`Learner.seed_rng`);
* the training state for checkpoints and exact resume (:meth:`Learner.training_state`): every
  registered network, optimiser, stateful object and model selection, and the generator;
* the deployable policy, built one way for a live learner and for a checkpoint
  (:meth:`Learner.deployable`): the algorithm names the networks its policy needs
  (``policy_networks``) and how they act (``make_policy``); the parameters are those a
  :class:`Selection` kept, else the newest.

:class:`LatentLearner` adds what every learner on world-model latents shares: the expert
episodes filtered once through the model (:class:`~wmil.imagination.expert.ExpertLatents`),
their rows, the offline metrics of the DITTO paper, and the deployed
:class:`~wmil.policy.LatentPolicy`. :class:`ImitationLearner` adds the shared actor-critic in
imagination (DITTO, D-GAIL/VMIL).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Optional

import numpy as np
import torch
from torch import nn

from wmil.config import ALGORITHMS, Features, LatentConfig, NonNegFloat, PosInt
from wmil.data.dataset import Dataset
from wmil.errors import UserError
from wmil.imagination.actor_critic import ActorCritic, ActorCriticConfig
from wmil.imagination.expert import ExpertLatents
from wmil.imagination.metrics import action_agreement, eval_rows, latent_distance
from wmil.nets import ActionHead, adam, apply_gradients
from wmil.policy import DeployedPolicy, LatentPolicy
from wmil.types import DataSpec, Imagined, State
from wmil.world_models.base import feature_size

Tensor = torch.Tensor

#: World models every latent learner accepts.
LATENT_MODELS = ("rssm", "gaussian_rssm", "dynamics")


def algorithm_class(name: str) -> type["Learner"]:
    """The learner class of algorithm ``name`` (a one-line UserError for an unknown name)."""
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    module, _, cls = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


class Selection:
    """Model selection: the parameters of ``networks`` at their best held-out score so far
    (lower is better unless ``higher_is_better``), deployed instead of the newest ones once a
    learner registers it (:meth:`Learner.add_selection`). ``patience`` > 0 marks it
    ``stopped`` after that many evaluations without improvement."""

    def __init__(self, networks: dict[str, nn.Module], higher_is_better: bool = False, patience: int = 0):
        self.networks = networks
        self.sign = -1.0 if higher_is_better else 1.0
        self.patience = patience
        self.best_score: Optional[float] = None
        self.best_step = 0
        self.stale = 0
        #: The kept parameters by network name (None until the first offer).
        self.snapshot: Optional[dict[str, dict[str, Tensor]]] = None

    def offer(self, score: float, step: int, force: bool = False) -> bool:
        """Keep the current parameters if ``score`` is the best so far (or ``force``)."""
        if force or self.best_score is None or self.sign * score < self.sign * self.best_score:
            self.snapshot = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                             for name, module in self.networks.items()}
            self.best_score, self.best_step, self.stale = float(score), int(step), 0
            return True
        self.stale += 1
        return False

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step, "stale": self.stale,
                "snapshot": self.snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.best_score = None if state["best_score"] is None else float(state["best_score"])
        self.best_step, self.stale = int(state["best_step"]), int(state["stale"])
        self.snapshot = state["snapshot"]


class Learner:
    """Base of every imitation algorithm (see the module docstring). Subclasses set the class
    attributes below, build their networks in ``__init__`` (then call :meth:`seed_rng`) and
    implement ``update``, ``policy_networks`` and ``make_policy``."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    progress_keys: ClassVar[tuple[str, ...]] = ()
    """Metrics shown on the progress bar."""
    metric_keys: ClassVar[tuple[str, ...]] = ()
    """Metrics every ``update`` logs (the algorithm conformance suite checks them)."""
    world_models: ClassVar[Optional[tuple[str, ...]]] = LATENT_MODELS
    """World models the algorithm trains in; None: it trains without one (BC)."""
    evaluation_act: ClassVar[str] = "greedy"
    """How ``wmil evaluate --act auto`` acts: 'greedy' (the most likely action) or 'sample'."""
    data_parallel: ClassVar[bool] = False
    """Whether the algorithm runs under torchrun: every batch it draws comes from the base's
    samplers (:meth:`LatentLearner.expert_rows`, :meth:`LatentLearner.start_states`,
    :meth:`ImitationLearner.sample_starts`), which shard a global draw over the processes."""

    def __init__(self, world_model, expert: Dataset, config, device: torch.device):
        if self.world_models is not None:
            if world_model is None:
                raise UserError(f"--algo {self.name} trains inside a world model: pass --model RUN_DIR "
                                "(from wmil train-model)")
            if expert.spec.discrete != world_model.spec.discrete:
                raise UserError(f"{self.name}: the expert dataset {expert.name} has {expert.spec.describe()} but the "
                                f"world model has {world_model.spec.describe()}; use data of the same action space")
        self.world_model = world_model
        self.config = config
        self.device = device
        self.spec: DataSpec = world_model.spec if world_model is not None else expert.spec
        self.networks = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.stateful: dict[str, Any] = {}
        self.selections: dict[str, Selection] = {}
        self.rng: np.random.Generator
        #: The last update step done (for evaluations that record when they selected).
        self.steps_done = 0
        #: This process's place in a data-parallel run (set by the trainer; None: one process).
        self.group = None
        #: Inside :meth:`whole_batches`: :meth:`shard` keeps every row.
        self._whole = False

    # ---- set-up -------------------------------------------------------------------------------
    def add_network(self, name: str, module: nn.Module, lr: Optional[float] = None, **settings) -> nn.Module:
        """Register ``module`` (moved to the device; saved in checkpoints) and, with ``lr``, an
        Adam optimiser for it under the same name (:func:`wmil.nets.adam`; ``settings``: e.g.
        ``eps``, ``weight_decay``)."""
        module = module.to(self.device)
        self.networks[name] = module
        if lr is not None:
            self.optimizers[name] = adam(module.parameters(), lr=lr, **settings)
        return module

    def add_state(self, name: str, obj: Any) -> Any:
        """Register an object with ``state_dict``/``load_state_dict`` (counters, running
        statistics) to be saved in checkpoints."""
        self.stateful[name] = obj
        return obj

    def add_selection(self, name: str, selection: Selection) -> Selection:
        """Register a model selection: its kept parameters are deployed and checkpointed."""
        self.selections[name] = selection
        return selection

    def add_component(self, name: str, component: Any) -> Any:
        """Register a component that trains networks of its own (the shared actor-critic, a
        supervised BC trainer): its ``networks()``, ``optimizers()``, ``selections()`` (where it
        has them) and its own ``state_dict`` (where it has one)."""
        for net_name, module in component.networks().items():
            self.add_network(net_name, module)
        self.optimizers.update(component.optimizers())
        self.selections.update(getattr(component, "selections", dict)())
        if hasattr(component, "state_dict"):
            self.add_state(name, component)
        return component

    def seed_rng(self) -> None:
        """The learner's NumPy generator (minibatch rows, start states), seeded from torch's
        global generator so that the run seed fixes it."""
        self.rng = np.random.default_rng(int(torch.randint(2**62, (1,))))

    @property
    def processes(self) -> int:
        """How many processes share each global batch (1 without torchrun)."""
        return 1 if self.group is None else self.group.size

    def shard(self, rows):
        """This process's block of a global draw ``rows`` (an array or tensor of N·k rows, the
        same on every process: the generator is seeded alike) — all of it in one process, and
        inside :meth:`whole_batches`."""
        if self.processes == 1 or self._whole:
            return rows
        size = len(rows) // self.processes
        return rows[self.group.rank * size:(self.group.rank + 1) * size]

    @contextlib.contextmanager
    def whole_batches(self) -> Iterator[None]:
        """Inside, :meth:`shard` keeps every row: for the evaluations rank 0 runs alone, which
        draw what one process would (GPRIL's held-out triples come from the samplers)."""
        previous, self._whole = self._whole, True
        try:
            yield
        finally:
            self._whole = previous

    @classmethod
    def parallel_refusal(cls, config) -> Optional[str]:
        """Why ``config`` cannot run data-parallel (None: it can); the trainer turns it into a
        one-line error under torchrun, before anything is written."""
        return None

    def gather(self, tensor: Tensor, dim: int = 1) -> Tensor:
        """The global batch of a sharded ``tensor`` (every process's block along ``dim``, in
        rank order; itself in one process): for batch statistics that must be the whole
        batch's, e.g. the actor-critic's advantage standardisation."""
        return tensor if self.group is None else self.group.gather(tensor, dim)

    def mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` averaged over the processes of a data-parallel run (as they are in one):
        for decisions every process must take alike, e.g. stopping on a non-finite loss."""
        if self.group is None:
            return values
        return self.group.average_scalars(values)

    def batch_counts(self) -> dict[str, int]:
        """The global counts each update draws, by config field (each must split evenly over the
        processes of a data-parallel run)."""
        return {}

    def step(self, name: str, loss: Tensor, clip: Optional[float] = None) -> Optional[float]:
        """One step of optimiser ``name`` on ``loss``, clipping at ``clip`` (None: no clipping);
        returns the gradient norm."""
        return apply_gradients(self.optimizers[name], loss, clip)

    # ---- what an algorithm implements ---------------------------------------------------------
    def update(self, step: int) -> dict[str, float]:
        """One training step; returns metrics (a 'loss/…' entry per optimised loss)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Offline metrics without the environment."""
        return {}

    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config) -> dict[str, nn.Module]:
        """Fresh networks the deployed policy needs, by the names they are registered under."""
        raise NotImplementedError

    @classmethod
    def make_policy(cls, world_model, networks: dict[str, nn.Module], spec: DataSpec, config) -> DeployedPolicy:
        """The deployed policy acting with ``networks`` (loaded, in eval mode)."""
        raise NotImplementedError

    # ---- state --------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """:meth:`update` number ``step`` (the trainer calls this)."""
        metrics = self.update(step)
        self.steps_done = step
        return metrics

    def training_state(self) -> dict:
        """Everything needed to resume exactly: tensors and plain types only."""
        return {"networks": self.networks.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "stateful": {name: obj.state_dict() for name, obj in self.stateful.items()},
                "selections": {name: sel.state_dict() for name, sel in self.selections.items()},
                "rng": self.rng.bit_generator.state, "steps_done": self.steps_done}

    def load_training_state(self, state: dict) -> None:
        self.networks.load_state_dict(state["networks"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["stateful"][name])
        for name, sel in self.selections.items():
            sel.load_state_dict(state["selections"][name])
        self.rng.bit_generator.state = state["rng"]
        self.steps_done = int(state["steps_done"])

    # ---- deployment ---------------------------------------------------------------------------
    def policy(self) -> DeployedPolicy:
        """The deployable policy of the current (or selected) parameters."""
        return self.deployable(self.world_model, self.config, self.training_state(), self.spec).to(self.device)

    @classmethod
    def deployable(cls, world_model, config, state: dict, spec: DataSpec) -> DeployedPolicy:
        """The deployed policy from a training state (a checkpoint's): the networks the policy
        needs, with the parameters model selection kept where it kept any, else the newest."""
        networks = cls.policy_networks(world_model, spec, config)
        kept: dict[str, dict] = {}
        for selection in state["selections"].values():
            kept.update(selection["snapshot"] or {})
        for name, module in networks.items():
            params = kept.get(name)
            if params is None:
                prefix = name + "."
                params = {k[len(prefix):]: v for k, v in state["networks"].items() if k.startswith(prefix)}
            module.load_state_dict(params)
            module.eval()
        return cls.make_policy(world_model, networks, spec, config)


class LatentLearner(Learner):
    """Base of the learners whose policy reads world-model latents (D-BC, DITTO, D-GAIL, SQIL,
    GPRIL): the expert episodes filtered once through the model, their rows, the offline
    metrics and the deployed :class:`LatentPolicy` of the network registered as 'actor'.
    Their config derives from :class:`wmil.config.LatentConfig` (``features``, ``horizon``,
    ``eval_starts``)."""

    config: LatentConfig

    def __init__(self, world_model, expert: Dataset, config: LatentConfig, device: torch.device):
        super().__init__(world_model, expert, config, device)
        self.expert = ExpertLatents.encode(world_model, expert, device, features=config.features)
        self.feature_dim = feature_size(world_model, config.features)
        #: Expert rows with a logged action (the last observation of an episode has none).
        self.action_rows = self.expert.action_rows
        if len(self.action_rows) == 0:
            raise UserError(f"{self.name}: the expert dataset {expert.name} has no transitions to imitate")
        self.eval_rows: Optional[np.ndarray] = None
        # The world data's latents are encoded on first use with their own seed (drawn here, from
        # the run seed): the same latents whenever that happens — after a resume, or on every
        # process of a data-parallel run, whose noise differs by rank.
        self._world_seed = int(torch.randint(2**62, (1,)))

    @property
    def actor(self) -> nn.Module:
        return self.networks["actor"]

    @property
    def compared_features(self) -> str:
        """The features the offline latent distance compares (the reward's, where there is one)."""
        return getattr(self.config, "reward_features", None) or self.config.features

    @property
    def world(self) -> ExpertLatents:
        """The world model's own datasets as latents (encoded on first use; ``world_episodes``
        of each at most): the states a policy meets beyond the demonstrations."""
        if getattr(self, "_world", None) is None:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self._world_seed)
                self._world = ExpertLatents.of_world_model(self.world_model, self.config.world_episodes,
                                                           self.device, self.config.features)
        return self._world

    def feature_box(self) -> tuple[Tensor, Tensor]:
        """``(low, high)``, each ``(F,)``: the per-dimension range of the features of the world
        model's datasets and the demos, the states the model was trained on. Beyond them a model
        extrapolates freely (CartPole, ``dynamics``: a random policy's imagined states reach 580
        standard deviations in 50 steps), and a network fitted on such states diverges (SQIL's Q
        reached 7,000 where r/(1 − γ) = 100); learners that fit networks on imagined states clamp
        them into this box."""
        if getattr(self, "_box", None) is None:
            both = torch.cat([self.world.features, self.expert.features.to(self.world.features.device)])
            self._box = both.min(0).values.to(self.device), both.max(0).values.to(self.device)
        return self._box

    def start_states(self, count: int, expert_rows: np.ndarray, rng: Optional[np.random.Generator] = None) -> State:
        """``count`` start states ``(B,)`` of imagined rollouts, drawn uniformly from the expert
        rows ``expert_rows``, from every world-data state, or half from each, per the config's
        ``starts`` (drawn with ``rng``, the learner's generator by default). ``count`` is global:
        each process gets its share of each part (:meth:`shard`)."""
        rng = self.rng if rng is None else rng
        mode = self.config.starts
        n_world = count if mode == "world" else count // 2 if mode == "mixed" else 0
        parts = []
        if count - n_world:
            rows = self.shard(rng.choice(expert_rows, count - n_world))
            parts.append(self.expert.states[torch.as_tensor(rows, device=self.expert.features.device)])
        if n_world:
            rows = self.shard(rng.choice(self.world.starts(0), n_world))
            parts.append(self.world.states[torch.as_tensor(rows, device=self.world.features.device)])
        return parts[0] if len(parts) == 1 else State.cat(parts)

    def start_counts(self, count: int, field: str) -> dict[str, int]:
        """:meth:`batch_counts` entries of a :meth:`start_states` draw of ``count`` (config field
        ``field``): each part of mixed starts is drawn and sharded on its own."""
        counts = {field: count}
        if getattr(self.config, "starts", "expert") == "mixed":
            counts[f"{field} // 2 (the world half of mixed starts)"] = count // 2
            counts[f"{field} - {field} // 2 (the expert half of mixed starts)"] = count - count // 2
        return counts

    def expert_rows(self, count: int) -> Tensor:
        """``count`` expert rows with a logged action, drawn uniformly with replacement (``count``
        is global: this process's share of them, :meth:`shard`)."""
        rows = self.shard(self.rng.choice(self.action_rows, count))
        return torch.as_tensor(rows, device=self.expert.features.device)

    def metric_rows(self) -> Optional[np.ndarray]:
        """Fixed expert start rows of the latent-distance metric (None when every expert episode
        is shorter than the horizon)."""
        try:
            return eval_rows(self.expert, self.config.horizon, self.config.eval_starts)
        except UserError:
            return None

    def evaluate(self) -> dict[str, float]:
        """Offline metrics (DITTO paper, section 5): the latent distance of the policy's own
        imagined rollouts from expert starts, and expert action prediction on expert latents."""
        out: dict[str, float] = {}
        if self.eval_rows is not None:
            out["eval/latent_distance"] = latent_distance(self.world_model, self.actor, self.expert, self.eval_rows,
                                                          self.config.horizon, features=self.config.features,
                                                          compare=self.compared_features)
        out.update(action_agreement(self.actor, self.expert, self.spec))
        return out

    @classmethod
    def policy_networks(cls, world_model, spec: DataSpec, config: LatentConfig) -> dict[str, nn.Module]:
        return {"actor": ActionHead(feature_size(world_model, config.features), spec, config)}

    @classmethod
    def make_policy(cls, world_model, networks: dict[str, nn.Module], spec: DataSpec,
                    config: LatentConfig) -> LatentPolicy:
        return LatentPolicy(world_model, networks["actor"], spec, config.features)


# ---------------------------------------------------------------------------------- imitation


@dataclass(frozen=True)
class ImitationConfig(ActorCriticConfig, LatentConfig):
    """The shared actor-critic in imagination + what an imitation reward needs besides."""

    reward_features: Optional[Features] = "deter"
    """What the reward compares (DITTO) or the discriminator reads (D-GAIL): 'deter', the recurrent state h (the DITTO authors' code: their reward and discriminator see h only — sampled z would make most of the reward sampling noise), 'sample', 'mean'; None: the same as ``features``."""
    bc_weight: NonNegFloat = 0.0
    """Weight of a behaviour-cloning term −log π(a_E | z_E) on expert latents added to the actor's
    loss (0: the papers' algorithms, reward only; > 0: a regularised variant, e.g. "DITTO + BC")."""
    bc_batch_size: PosInt = 256
    """Expert (latent, action) rows per update of the behaviour-cloning term."""
    continue_discount: bool = True
    """When the world model has a continue head (``-o continue_head=true`` when training it), discount each imagined step by γ times the predicted probability that the episode goes on, so nothing after a predicted ending counts (DreamerV2's actor-critic). The DITTO authors' world models have no such head, so by default nothing changes; false ignores a head that is there."""


class ImitationLearner(LatentLearner):
    """Base of the actor-critic imitation learners (DITTO, D-GAIL): start states, the shared
    actor-critic, the optional behaviour-cloning term. A learner adds its reward and ``update``."""

    config: ImitationConfig
    evaluation_act = "sample"  # the DITTO authors evaluate their agents with sampled actions
    data_parallel = True

    def discount(self, imagined: Imagined) -> Optional[Tensor]:
        """``(H, B)``: γ · P(continue) of each imagined state after the start (the discount of
        what follows it, :mod:`wmil.imagination.returns`), without gradients; None (a constant
        γ) when the world model has no continue head or ``continue_discount`` is off."""
        if not self.config.continue_discount or not self.has_continue_head:
            return None
        with torch.no_grad():
            prob = self.world_model.continue_prob(imagined.states[1:])
        return None if prob is None else self.config.gamma * prob

    def batch_counts(self) -> dict[str, int]:
        cfg = self.config
        counts = self.start_counts(cfg.batch_size, "batch_size")
        if cfg.bc_weight > 0:
            counts["bc_batch_size"] = cfg.bc_batch_size
        return counts

    def __init__(self, world_model, expert: Dataset, config: ImitationConfig, device: torch.device):
        super().__init__(world_model, expert, config, device)
        # Asked once, of one initial state, so that a model without a continue head never has an
        # imagined rollout's states stacked for nothing (3.0 ms of a DITTO update on rssm small, 2
        # threads). continue_prob is optional in the protocol: a world model written before it
        # (or outside wmil) may lack it.
        predict = getattr(world_model, "continue_prob", None)
        with torch.no_grad():
            self.has_continue_head = predict is not None and predict(world_model.initial(1)) is not None
        self.starts = self.expert.starts(config.horizon)
        self.ac = self.add_component("actor_critic", ActorCritic(self.feature_dim, self.spec, config).to(device))
        self.seed_rng()
        self.eval_rows = self.metric_rows()

    def reward_latent(self, states: State, features: Optional[Tensor] = None) -> Tensor:
        """What the reward compares: the ``reward_features`` mode of ``states``; ``features``, the
        policy's features of the same states where already computed, are reused when the modes
        agree."""
        mode = self.compared_features
        if features is not None and mode == self.config.features:
            return features
        return self.world_model.features(states, mode)

    def imagined_latent(self, imagined: Imagined) -> Tensor:
        """:meth:`reward_latent` of an imagined rollout's states ``(H+1, B, L)`` (its features
        when the modes agree, its h alone for 'deter'), with gradients for dynamics backprop."""
        mode = self.compared_features
        if mode == self.config.features:
            return imagined.features
        if mode == "deter":
            return imagined.deter
        return self.world_model.features(imagined.states, mode)

    @property
    def expert_latent(self) -> Tensor:
        """``(N, L)``: :meth:`reward_latent` of every expert row, computed once (the expert's z
        is a fixed posterior sample), so an update gathers only the rows and width it compares."""
        if getattr(self, "_expert_latent", None) is None:
            self._expert_latent = self.reward_latent(self.expert.states, self.expert.features)
        return self._expert_latent

    def start_rows(self, count: int) -> np.ndarray:
        """``count`` expert start rows of a global batch, drawn uniformly with replacement."""
        return self.rng.choice(self.starts, count)

    def sample_starts(self, count: Optional[int] = None) -> tuple[State, Tensor]:
        """``count`` (default ``batch_size``, global) expert start states ``(B,)`` and the reward
        latents of the expert windows that follow them ``(H+1, B, L)`` (row k: k steps on); this
        process's share."""
        rows = self.shard(self.start_rows(self.config.batch_size if count is None else count))
        index = self.expert.window(rows, self.config.horizon)
        return self.expert.states[index[0]], self.expert_latent[index]

    def bc_term(self) -> tuple[Optional[Tensor], dict]:
        """``bc_weight`` × the mean −log π(a_E | z_E) over a minibatch of expert rows (None when
        the weight is 0), for :meth:`ActorCritic.update`'s ``actor_extra``."""
        if self.config.bc_weight == 0:
            return None, {}
        rows = self.expert_rows(self.config.bc_batch_size)
        nll = -self.actor.log_prob(self.expert.features[rows], self.expert.action[rows]).mean()
        return self.config.bc_weight * nll, {"loss/bc_nll": float(nll.detach())}
