"""``wmil build-dataset``: record a policy in an environment into a Minari dataset.

A build is described by a :class:`BuildConfig`, given by CLI flags or by a YAML recipe in
``datasets/`` (the same field names). Mixed-quality data comes from several ``parts`` (or a
list of epsilons, which splits the episodes evenly between them).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from wmil.data import names
from wmil.data.collect import Part, collect
from wmil.data.recipes import read_recipe
from wmil.data.storage import DatasetWriter, check_writable
from wmil.envs import EnvConfig, make_env
from wmil.errors import UserError
from wmil.progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover
    from wmil.data.dataset import Dataset

#: Offset of the seeds used to measure reference scores (kept apart from the data's seeds).
REF_SEED_OFFSET = 1_000_000


@dataclass
class BuildConfig:
    """Everything that defines a recorded dataset (a recipe file has the same fields)."""

    name: str
    """Dataset id 'namespace/name-vN'."""
    env: str
    """Gymnasium environment id, e.g. CartPole-v1, ALE/Pong-v5, FetchPush-v4."""
    policy: str = "random"
    """'random', 'expert', 'module:callable', torch.export .pt2, TorchScript .pt or SB3 .zip (when parts is empty)."""
    epsilon: list[float] = field(default_factory=lambda: [0.0])
    """ε values; the episodes are split evenly between them (when parts is empty)."""
    episodes: int = 10
    """Total number of episodes (when parts is empty)."""
    parts: list[Part] = field(default_factory=list)
    """Explicit blocks of (policy, epsilon, episodes); overrides policy/epsilon/episodes."""
    seed: int = 0
    """Episode k is reset with seed+k; same seed → identical dataset for any worker count."""
    workers: int = 1
    """Parallel environment copies (gymnasium AsyncVectorEnv) when > 1."""
    pixels: Optional[int] = None
    """Render observations to N×N uint8 images (C, N, N); ALE always uses pixels (64)."""
    grayscale: bool = False
    """One channel instead of three for pixel observations."""
    max_episode_steps: Optional[int] = None
    """Override the environment's time limit."""
    ref_min_score: Optional[float] = None
    """Return of a random policy; measured over ref_episodes when not given."""
    ref_max_score: Optional[float] = None
    """Return of the expert; measured over ref_episodes when not given and an expert exists."""
    ref_episodes: int = 10
    """Episodes used to measure missing reference scores (0: do not measure)."""
    description: str = ""
    """Free text stored in the dataset metadata."""
    author: Optional[str] = None
    """Author stored in the Minari metadata (None: left out, Minari shows 'Not provided')."""
    author_email: Optional[str] = None
    """Author's e-mail stored in the Minari metadata (None: left out)."""
    code_permalink: Optional[str] = None
    """Link to the code that made the data, stored in the Minari metadata (None: left out)."""

    def resolved_parts(self) -> list[Part]:
        if self.parts:
            return [p if isinstance(p, Part) else Part(**p) for p in self.parts]
        eps = self.epsilon if isinstance(self.epsilon, (list, tuple)) else [self.epsilon]
        counts = [self.episodes // len(eps) + (1 if i < self.episodes % len(eps) else 0) for i in range(len(eps))]
        return [Part(self.policy, float(e), n) for e, n in zip(eps, counts) if n > 0]

    def env_config(self, pixels: Optional[int] = -1) -> EnvConfig:
        is_ale = self.env.startswith("ALE/")
        size = self.pixels if pixels == -1 else pixels
        grayscale = self.grayscale or (is_ale and size is None)
        if is_ale and size is None:
            size = 64
        return EnvConfig(self.env, pixels=size, grayscale=grayscale if size else False,
                         max_episode_steps=self.max_episode_steps)


def load_recipe(path: str | Path, **overrides) -> BuildConfig:
    """Read a YAML recipe; ``overrides`` (non-None values) replace its fields. Every field is
    checked (types, ranges) before anything is recorded; errors name the file and the field."""
    path = Path(path)
    raw = read_recipe(path)
    known = {f.name for f in dataclasses.fields(BuildConfig)}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for required in ("name", "env"):
        if required not in raw:
            raise UserError(f"{path}: missing field '{required}'")
    if "parts" in raw:
        raw["parts"] = _parse_parts(raw["parts"], raw.get("policy", "random"), f"{path}: ")
    if "epsilon" in raw and not isinstance(raw["epsilon"], list):
        raw["epsilon"] = [raw["epsilon"]]
    config = BuildConfig(**raw)
    validate(config, f"{path}: ")
    return config


def _parse_parts(parts, default_policy, where: str) -> list[Part]:
    if not isinstance(parts, list) or not parts:
        raise UserError(f"{where}field 'parts' must be a non-empty list of {{policy, epsilon, episodes}} mappings")
    out = []
    for i, p in enumerate(parts):
        if not isinstance(p, dict) or not set(p) <= {"policy", "epsilon", "episodes"} or "episodes" not in p:
            raise UserError(f"{where}field 'parts' entry {i} must be a mapping of policy, epsilon and episodes "
                            f"(episodes required), got {p!r}")
        part = Part(policy=p.get("policy", default_policy), epsilon=p.get("epsilon", 0.0), episodes=p["episodes"])
        _check_type(f"parts[{i}].policy", part.policy, str, where)
        _check_type(f"parts[{i}].epsilon", part.epsilon, "number", where)
        _check_type(f"parts[{i}].episodes", part.episodes, int, where)
        out.append(Part(part.policy, float(part.epsilon), part.episodes))
    return out


#: Field -> the type a recipe (or BuildConfig) must give it; None is allowed where listed.
_FIELD_TYPES = {"name": str, "env": str, "policy": str, "episodes": int, "seed": int, "workers": int, "pixels": int,
                "grayscale": bool, "max_episode_steps": int, "ref_min_score": "number", "ref_max_score": "number",
                "ref_episodes": int, "description": str}
_OPTIONAL = {"pixels", "max_episode_steps", "ref_min_score", "ref_max_score"}


def _check_type(name: str, value, kind, where: str) -> None:
    if kind == "number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    elif kind is int:
        ok, wanted = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is bool:
        ok, wanted = isinstance(value, bool), "true or false"
    else:
        ok, wanted = isinstance(value, str), "a string"
    if not ok:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UserError(f"{where}field '{name}' must be {wanted}, got {shown} ({type(value).__name__})")


def validate(config: BuildConfig, where: str = "") -> None:
    """Types and ranges of every field; ``where`` prefixes messages (e.g. the recipe path)."""
    for name, kind in _FIELD_TYPES.items():
        value = getattr(config, name)
        if value is None and name in _OPTIONAL:
            continue
        _check_type(name, value, kind, where)
    names.validate_name(config.name)
    if config.seed < 0:
        raise UserError(f"{where}--seed {config.seed}: must be >= 0")
    if config.workers < 1:
        raise UserError(f"{where}--workers {config.workers}: must be >= 1")
    if config.episodes < 0 or config.ref_episodes < 0:
        raise UserError(f"{where}episodes and ref_episodes must be >= 0")
    if config.max_episode_steps is not None and config.max_episode_steps < 1:
        raise UserError(f"{where}--max-episode-steps {config.max_episode_steps}: must be >= 1")
    if config.parts:
        parts = _parse_parts([dataclasses.asdict(p) if isinstance(p, Part) else p for p in config.parts],
                             config.policy, where)
    elif config.episodes <= 0:
        raise UserError(f"{where}dataset {config.name}: no episodes requested (--episodes must be >= 1)")
    else:
        eps = config.epsilon if isinstance(config.epsilon, (list, tuple)) else [config.epsilon]
        if not eps:
            raise UserError(f"{where}field 'epsilon' is an empty list; give at least one value")
        for i, e in enumerate(eps):
            _check_type(f"epsilon[{i}]", e, "number", where)
        if len(eps) > config.episodes:
            raise UserError(f"{where}{len(eps)} epsilon values for {config.episodes} episode(s): the episodes are "
                            "split evenly between the values, so each needs at least one; give --episodes "
                            f">= {len(eps)} or fewer values")
        parts = config.resolved_parts()
    if not parts or sum(p.episodes for p in parts) <= 0:
        raise UserError(f"{where}dataset {config.name}: no episodes requested (--episodes must be >= 1)")
    for p in parts:
        if p.episodes < 0:
            raise UserError(f"{where}dataset {config.name}: a part has {p.episodes} episodes; must be >= 0")
        if not 0.0 <= p.epsilon <= 1.0:
            raise UserError(f"{where}dataset {config.name}: epsilon {p.epsilon} must be between 0 and 1")
    if config.pixels is not None and not 8 <= config.pixels <= 512:
        raise UserError(f"{where}--pixels {config.pixels}: use a size between 8 and 512 (64 is the default)")


def mean_return(env_config: EnvConfig, policy: str, episodes: int, seed: int, protocol=None) -> float:
    """Mean return of ``policy`` ('random', 'expert', …) over ``episodes`` episodes seeded
    ``seed``, ``seed + 1``, … (under an evaluation ``protocol``, when given)."""
    returns = [float(ep.rewards.sum()) for ep in collect(env_config, [Part(policy, 0.0, episodes)], seed,
                                                         protocol=protocol)]
    return float(np.mean(returns))


def _has_expert(env_id: str) -> bool:
    from wmil.data.experts import EXPERT_ENV_IDS

    return env_id in EXPERT_ENV_IDS


def reference_scores(config: BuildConfig) -> tuple[Optional[float], Optional[float]]:
    """(ref_min_score, ref_max_score): given, or measured on seeds apart from the data's."""
    lo, hi = config.ref_min_score, config.ref_max_score
    if config.ref_episodes > 0:
        # Returns do not depend on how observations are rendered: score on the vector env
        # (much faster for pixel builds), except ALE whose observations are always pixels.
        env_config = config.env_config(pixels=None) if not config.env.startswith("ALE/") else config.env_config()
        seed = config.seed + REF_SEED_OFFSET
        if lo is None:
            lo = mean_return(env_config, "random", config.ref_episodes, seed)
        if hi is None and _has_expert(config.env):
            hi = mean_return(env_config, "expert", config.ref_episodes, seed)
    return lo, hi


def build_dataset(config: BuildConfig, overwrite: bool = False, progress: bool = True) -> "Dataset":
    """Record the dataset described by ``config``; returns the opened :class:`Dataset`."""
    from wmil.data.dataset import load, spec_from_spaces

    validate(config)
    check_writable(config.name, overwrite)
    parts = config.resolved_parts()
    env_config = config.env_config()
    probe = make_env(env_config)
    observation_space, action_space = probe.observation_space, probe.action_space
    env_spec = _registered_spec(config.env)
    probe.close()
    spec_from_spaces(observation_space, action_space, f"environment {config.env}")
    for p in parts:  # fail on a bad policy before recording anything
        from wmil.data.policies import make_policy

        make_policy(p.policy, action_space, config.env, p.epsilon)

    total = sum(p.episodes for p in parts)
    started = time.perf_counter()
    returns, steps = [], 0
    bar = progress_bar(total, f"recording {config.name}", progress, unit="ep")
    with DatasetWriter(config.name, observation_space, action_space, env_spec=env_spec, overwrite=overwrite,
                       description=config.description, algorithm_name=_algorithm_name(parts),
                       author=config.author, author_email=config.author_email,
                       code_permalink=config.code_permalink) as writer:
        for episode in collect(env_config, parts, config.seed, config.workers):
            writer.add(episode)
            returns.append(float(episode.rewards.sum()))
            steps += episode.length
            bar.update(1)
            bar.set_postfix(steps=steps, mean_return=f"{np.mean(returns):.1f}", refresh=False)
        bar.close()
        elapsed = time.perf_counter() - started
        lo, hi = reference_scores(config)
        writer.metadata.update({
            "wmil": {
                "env": env_config.to_dict(),
                "parts": [dataclasses.asdict(p) for p in parts],
                "seed": config.seed,
                "workers": config.workers,
                "recipe": _jsonable(dataclasses.asdict(config)),
                "record_seconds": round(elapsed, 3),
            },
            "num_episodes_average_score": config.ref_episodes,
        })
        if lo is not None:
            writer.metadata["ref_min_score"] = lo
        if hi is not None:
            writer.metadata["ref_max_score"] = hi
    return load(config.name)


def _algorithm_name(parts) -> str:
    """What recorded the data, for Minari's 'Algorithm' field: 'wmil build-dataset: expert ε=0.3, random'."""
    described = [p.policy + (f" ε={p.epsilon:g}" if p.epsilon else "") for p in parts]
    return "wmil build-dataset: " + ", ".join(dict.fromkeys(described))


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _registered_spec(env_id: str):
    """The registered gymnasium spec (without wmil's wrappers), for Minari's metadata."""
    import gymnasium as gym

    try:
        return gym.spec(env_id)
    except Exception:  # an env made through an entry point gymnasium cannot look up again
        return None
