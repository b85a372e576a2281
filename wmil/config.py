"""The one config layer: typed config dataclasses, their validation, presets and overrides.

Every component (world model, imitation algorithm, trainer) is configured by one frozen
dataclass deriving from :class:`Config`. Each field carries a type annotation, a default and a
one-line docstring under it (``wmil config show`` and ``--help`` print them). The annotation
is the whole contract of the field:

* ``PosInt`` / ``NonNegInt``: sizes and counts (at least 1 / at least 0);
* ``PosFloat`` / ``NonNegFloat``: rates, clips and scales (finite, > 0 / ≥ 0);
* ``Prob``: probabilities and fractions in [0, 1]; ``Discount``: γ in (0, 1];
* ``Literal[...]``: a choice; ``Optional[...]``: None allowed; ``bool``, ``str``, plain ``float``
  (finite) and ``int``;
* ``Annotated[float, Range(...)]`` for any other interval.

:meth:`Config.__post_init__` validates every field on construction, so a config that exists is
valid; every problem is reported in one style, naming the class, the field, the value and
what is allowed::

    DittoConfig field 'bc_weight': bc_weight=-1.0 must be at least 0

Configs are composed from shared blocks (an actor block, a learner block, the loop cadence …)
by inheritance, so each hyperparameter is declared once, with one name and one default. An
algorithm whose paper uses another value for a shared field says so in its ``defaults``
(applied under every preset; see :func:`build_config`), with the reason beside it.

Presets: 'tiny' (tests), 'small' (a 2-core CPU) and 'paper' (the published sizes). A config
is built as *field defaults → the component's defaults → the preset → overrides*, where
overrides are ``-o key=value`` strings coerced to the field's type.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
import types
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional, Union

from wmil.errors import UserError

PRESETS = ("tiny", "small", "paper")

#: The registered components, name -> "module:Class", imported only where a component is built
#: (so that the command line starts fast). A new algorithm or world model is one file plus one
#: line here.
ALGORITHMS: dict[str, str] = {
    "ditto": "wmil.algos.ditto:Ditto",
    "dgail": "wmil.algos.dgail:DGail",
    "dbc": "wmil.algos.dbc:DBC",
    "bc": "wmil.algos.bc:BC",
    "vins": "wmil.algos.vins:VINS",
    "sqil": "wmil.algos.sqil:Sqil",
    "gpril": "wmil.algos.gpril:Gpril",
}
WORLD_MODELS: dict[str, str] = {
    "rssm": "wmil.world_models.rssm:RSSM",
    "gaussian_rssm": "wmil.world_models.gaussian_rssm:GaussianRSSM",
    "dynamics": "wmil.world_models.dynamics:Dynamics",
}


# ------------------------------------------------------------------------------------ types


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in (None: unbounded on that side)."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def contains(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """E.g. 'at least 1', 'greater than 0', 'in (0, 1]'."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low:
            return f"at least {_num(low[1])}" if low[0] == "[" else f"greater than {_num(low[1])}"
        if high:
            return f"at most {_num(high[1])}" if high[0] == "]" else f"below {_num(high[1])}"
        return "any finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PosInt = Annotated[int, Range(ge=1)]
"""A size or a count: at least 1."""
NonNegInt = Annotated[int, Range(ge=0)]
"""A count that may be 0 (0 usually switches something off)."""
PosFloat = Annotated[float, Range(gt=0)]
"""A learning rate, clip, scale or std: finite and greater than 0."""
NonNegFloat = Annotated[float, Range(ge=0)]
"""A weight that may be 0 (0 switches its term off)."""
Prob = Annotated[float, Range(ge=0, le=1)]
"""A probability or fraction in [0, 1]."""
Discount = Annotated[float, Range(gt=0, le=1)]
"""A discount factor γ in (0, 1]."""


# ------------------------------------------------------------------------------ validation


def _error(cls: type, name: str, value: Any, problem: str) -> UserError:
    """The one message style: class, field, value, what is wrong or allowed."""
    return UserError(f"{cls.__name__} field {name!r}: {name}={value!r} {problem}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(hint: Any) -> tuple[Any, Optional[Range], bool]:
    """``(base type, range, optional)`` of a field annotation."""
    rng, optional = None, False
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            args = typing.get_args(hint)
            rng = next((a for a in args[1:] if isinstance(a, Range)), rng)
            hint = args[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(hint))
            if len(args) != 1:
                return hint, rng, optional
            hint = args[0]
        else:
            return hint, rng, optional


def check_value(cls: type, name: str, hint: Any, value: Any) -> None:
    """Raise a one-line UserError unless ``value`` fits the annotation ``hint`` of field
    ``name`` of ``cls``."""
    base, rng, optional = _unwrap(hint)
    if value is None:
        if optional:
            return
        raise _error(cls, name, value, "must be set (None is not allowed)")
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = list(typing.get_args(base))
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise _error(cls, name, value, f"is not one of {choices}")
        return
    if base is bool:
        if not isinstance(value, bool):
            raise _error(cls, name, value, "must be true or false")
        return
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(cls, name, value, "must be a whole number")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _error(cls, name, value, "must be a number")
        if not math.isfinite(value):
            raise _error(cls, name, value, "must be finite")
    elif base is str:
        if not isinstance(value, str):
            raise _error(cls, name, value, "must be a string")
        return
    elif origin in (tuple, list):
        item = typing.get_args(base)[0] if typing.get_args(base) else Any
        if not isinstance(value, (tuple, list)):
            raise _error(cls, name, value, "must be a list")
        for element in value:
            if item is not Any:
                check_value(cls, name, item, element)
        return
    else:
        return
    if rng is not None and not rng.contains(value):
        raise _error(cls, name, value, f"must be {rng.describe()}")


@dataclass(frozen=True)
class Config:
    """Base of every config dataclass: validates every field when constructed.

    A component's config class also says where its paper departs from the shared blocks'
    defaults (``DEFAULTS``) and names its presets (``PRESETS``); build it with
    :meth:`preset` (``wmil`` does everywhere), which applies both. The bare constructor gives
    the blocks' defaults only.
    """

    DEFAULTS: ClassVar[Mapping[str, Any]] = {}
    """Field values of this component that differ from its blocks' defaults, under every preset."""
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {"tiny": {}, "small": {}, "paper": {}}
    """Preset name -> field values: 'tiny' (tests), 'small' (a 2-core CPU), 'paper' (published sizes)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            check_value(type(self), f.name, hints[f.name], getattr(self, f.name))

    @classmethod
    def preset(cls, name: str = "small", overrides: Optional[Mapping[str, Any]] = None, where: str = ""):
        """The config of preset ``name`` with ``overrides`` (see :func:`build_config`)."""
        return build_config(cls, name, overrides, where)

    def invalid(self, name: str, problem: str) -> UserError:
        """A one-line UserError about field ``name``, in the style of the validation (for
        checks that need more than the field's annotation, e.g. the action space)."""
        return _error(type(self), name, getattr(self, name), problem)


# ------------------------------------------------------------------------------ coercion


def coerce(cls: type, name: str, value: Any) -> Any:
    """A value for field ``name`` of config class ``cls`` from ``value``: strings from the
    command line (``-o name=value``) are read as the field's type; anything else is kept (and
    checked when the config is built)."""
    if not isinstance(value, str):
        return value
    base, _, optional = _unwrap(_hints(cls)[name])
    text = value.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is Literal or base is str:
        choices = typing.get_args(base)
        if choices and not isinstance(choices[0], str):
            base = type(choices[0])
        else:
            return text
    try:
        if base is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if typing.get_origin(base) in (tuple, list):
            item = typing.get_args(base)[0]
            parts = [p for p in text.replace(" ", "").split(",") if p]
            return tuple(item(p) for p in parts)
    except ValueError:
        kind = getattr(base, "__name__", str(base))
        raise UserError(f"{cls.__name__} field {name!r}: cannot read {value!r} as {kind}") from None
    return value


# ------------------------------------------------------------------------------ building


def build_config(config_cls: type, preset: str = "small", overrides: Optional[Mapping[str, Any]] = None,
                 where: str = ""):
    """``config_cls`` from its field defaults, then its ``DEFAULTS``, then ``PRESETS[preset]``,
    then ``overrides`` (strings coerced to each field's type); validated once, at the end."""
    presets = config_cls.PRESETS
    if preset not in presets:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    overrides = dict(overrides or {})
    valid = {f.name for f in fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UserError(f"unknown config field(s) {unknown} for {where or config_cls.__name__}; "
                        f"valid fields: {sorted(valid)} (see 'wmil config show')")
    values = {**config_cls.DEFAULTS, **presets[preset]}
    values.update({name: coerce(config_cls, name, value) for name, value in overrides.items()})
    return config_cls(**values)


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["lr=1e-4", "model.deter=256"]`` → ``{"lr": "1e-4", "model.deter": "256"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"-o {pair!r}: expected key=value, e.g. -o lr=1e-4 or -o model.deter=256")
        out[key.strip()] = value.strip()
    return out


def split_overrides(overrides: Mapping[str, str], groups: Mapping[str, type]) -> dict[str, dict[str, str]]:
    """Route ``group.key=value`` to its group; a bare ``key`` to the one group whose config
    class has it. ``groups`` maps a group name to a config class (or instance)."""
    names = {group: {f.name for f in fields(cls)} for group, cls in groups.items()}
    routed: dict[str, dict[str, str]] = {name: {} for name in groups}
    for key, value in overrides.items():
        group, dot, field = key.partition(".")
        if dot and group in groups:
            routed[group][field] = value
            continue
        owners = [name for name, known in names.items() if key in known]
        if len(owners) != 1:
            known = {name: sorted(found) for name, found in names.items()}
            reason = "is ambiguous; prefix it with its group" if owners else "is not a config field"
            raise UserError(f"-o {key}={value}: {key!r} {reason} (fields: {known}; see 'wmil config show')")
        routed[owners[0]][key] = value
    return routed


def to_dict(config: Any) -> dict:
    """Plain dict of a config (tuples as lists, for YAML)."""
    return asdict(config) if is_dataclass(config) else dict(config)


def parse_indices(text: str, dim: int, field: str) -> list[int]:
    """Coordinates named by a config string: ``'3,4,5'`` / ``'3:6,9'`` → sorted coordinates in
    ``0..dim-1`` (empty text: all of them); a one-line UserError naming ``field`` otherwise."""
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


def parse_index_groups(text: str, dim: int, field: str) -> list[list[int]]:
    """Groups of coordinates separated by ``';'``: ``'0:3;9:11'`` → ``[[0, 1, 2], [9, 10]]``;
    text without ``';'`` is one group (empty text: one group of every coordinate)."""
    parts = [part for part in str(text).split(";")]
    if len(parts) > 1 and any(not part.strip() for part in parts):
        raise UserError(f"config field {field!r} = {text!r}: an empty group between ';' separators; "
                        "write groups like '0:3;9:11'")
    return [parse_indices(part, dim, field) for part in parts]


# ------------------------------------------------------------------------------ documentation


def field_docs(config_cls: type) -> dict[str, str]:
    """The one-line docstring under each field of a config dataclass (for ``--help``)."""
    docs: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def describe_type(config_cls: type, name: str) -> str:
    """What field ``name`` accepts, e.g. 'int ≥ 1', "one of 'sample', 'mean'", 'float in [0, 1]'."""
    base, rng, optional = _unwrap(_hints(config_cls)[name])
    if typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(repr(c) for c in typing.get_args(base))
    elif typing.get_origin(base) in (tuple, list):  # comma-separated on the command line
        item, item_range, _ = _unwrap(typing.get_args(base)[0])
        text = "list of " + getattr(item, "__name__", str(item))
        if item_range is not None:
            text += " " + item_range.describe()
    else:
        text = getattr(base, "__name__", str(base))
        if rng is not None:
            text += " " + rng.describe()
    return text + (" or None" if optional else "")


def describe(config: Any) -> list[tuple[str, Any, str, str]]:
    """``(field, value, accepted values, docstring)`` for every field of a config instance."""
    docs = field_docs(type(config))
    return [(f.name, getattr(config, f.name), describe_type(type(config), f.name), docs.get(f.name, ""))
            for f in fields(config)]


# ------------------------------------------------------------------------------ shared blocks
#
# Blocks that several components compose (by inheritance): each field is declared here once.
# A component whose paper uses another value lists it in its registration's ``defaults``.

Activation = Literal["elu", "relu", "silu", "tanh"]
"""Activation functions of the MLPs (:data:`wmil.nets.ACTIVATIONS`)."""
Features = Literal["sample", "mean", "deter"]
"""World-model features: 'sample' [h, z] (z sampled, DreamerV2), 'mean' [h, E z] (class
probabilities or the Gaussian mean), 'deter' h (see ``WorldModel.features``)."""


@dataclass(frozen=True)
class LoopConfig(Config):
    """Cadence of a training run (shared by ``train-model`` and ``imagine``)."""

    steps: PosInt = 2000
    """Training updates."""
    seed: NonNegInt = 0
    """Seeds initialisation, sampling and any data split."""
    log_every: PosInt = 25
    """Updates between metric records."""
    eval_every: PosInt = 250
    """Updates between offline evaluations."""
    checkpoint_every: PosInt = 500
    """Updates between checkpoints (the last step is always saved)."""
    on_divergence: Literal["stop", "warn"] = "stop"
    """'stop' or 'warn' when a gradient norm or metric turns non-finite or a loss jumps far above its running level (a non-finite loss always stops)."""
    allow_nonfinite: bool = False
    """Accept NaN/inf values in the data (an error otherwise: they can only train to NaN)."""


@dataclass(frozen=True)
class OptimizerConfig(Config):
    """Adam settings of a world model's trainer."""

    lr: PosFloat = 3e-4
    """Adam learning rate (DITTO: 3e-4)."""
    adam_eps: PosFloat = 1e-5
    """Adam epsilon (DreamerV2: 1e-5)."""
    grad_clip: PosFloat = 200.0
    """Global gradient-norm clip (DITTO: 200)."""


@dataclass(frozen=True)
class ActorConfig(Config):
    """The policy network π(a | x) of every learner (:class:`wmil.nets.ActionHead`)."""

    layers: NonNegInt = 2
    """Hidden layers of the policy MLP."""
    units: PosInt = 200
    """Units per hidden layer of the policy (and of the learner's other MLPs unless they have their own)."""
    act: Activation = "elu"
    """Activation of the policy (and of the learner's other MLPs unless they have their own)."""
    min_std: PosFloat = 0.1
    """Lower bound of a continuous policy's pre-tanh std."""
    actor_lr: PosFloat = 3e-4
    """Adam learning rate of the policy (DITTO code: 3e-4 for every network)."""
    grad_clip: PosFloat = 100.0
    """Global gradient-norm clip of each of the learner's networks unless it has its own."""


@dataclass(frozen=True)
class LearnerConfig(ActorConfig):
    """What every imitation learner has: a policy and minibatches."""

    batch_size: PosInt = 256
    """Samples per update: expert rows, demo transitions or imagination start states (the algorithm's docstring says which)."""


@dataclass(frozen=True)
class LatentConfig(LearnerConfig):
    """A learner whose policy reads world-model latents."""

    features: Features = "sample"
    """Latent features the policy (and critic) read: 'sample' [h, z] (z from the prior in imagination, from the posterior when deployed: the distributions the prior is trained to match), 'mean' [h, E z] (the prior's class probabilities in imagination but the posterior's when deployed: a mismatch for learners that imagine), 'deter' h."""
    horizon: PosInt = 15
    """Imagined steps per rollout (H); also the horizon of the latent-distance metric."""
    eval_starts: PosInt = 256
    """Expert start states used for the offline metrics."""


#: Where imagined rollouts start (:class:`StartsConfig`).
Starts = Literal["expert", "world", "mixed"]


@dataclass(frozen=True)
class StartsConfig(Config):
    """Where a learner's imagined rollouts start."""

    starts: Starts = "expert"
    """Start states of imagined rollouts: 'expert' states (the papers), 'world'-data states (the states of the world model's own datasets, which the demos may never show), or half of each ('mixed')."""
    world_episodes: PosInt = 200
    """At most this many episodes of each of the world model's datasets are encoded when world-data states are used."""


@dataclass(frozen=True)
class DiscountConfig(Config):
    gamma: Discount = 0.95
    """Discount γ (DITTO: 0.95)."""


@dataclass(frozen=True)
class TargetConfig(Config):
    """A slow target copy of a value network."""

    target_every: NonNegInt = 100
    """Hard copy into the target network every this many updates (0: Polyak averaging every update)."""
    target_tau: Prob = 0.02
    """Polyak rate τ of the target network when target_every is 0 (φ̄ ← φ̄ + τ(φ − φ̄))."""


@dataclass(frozen=True)
class EntropyConfig(Config):
    """Weight of the policy's entropy (the temperature α of soft RL)."""

    entropy_discrete: NonNegFloat = 0.05
    """Entropy weight for categorical policies (DITTO code: 0.05)."""
    entropy_continuous: NonNegFloat = 3e-4
    """Entropy weight for tanh-Gaussian policies (their entropy is on another scale)."""


@dataclass(frozen=True)
class CriticConfig(Config):
    critic_lr: PosFloat = 3e-4
    """Adam learning rate of the critic / Q-networks (DITTO code: 3e-4)."""
