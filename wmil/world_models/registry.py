"""The world-model registry: a new model is one new file plus one line here."""

from __future__ import annotations

from typing import Any, Optional

from wmil.errors import UserError
from wmil.types import DataSpec
from wmil.world_models.base import Registration, WorldModel, build_config
from wmil.world_models.dynamics import DYNAMICS_PRESETS, Dynamics, DynamicsConfig
from wmil.world_models.gaussian_rssm import GAUSSIAN_RSSM_PRESETS, GaussianRSSM, GaussianRSSMConfig
from wmil.world_models.rssm import RSSM, RSSM_PRESETS, RSSMConfig

WORLD_MODELS: dict[str, Registration] = {
    "rssm": Registration(RSSM, RSSMConfig, RSSM_PRESETS),
    "gaussian_rssm": Registration(GaussianRSSM, GaussianRSSMConfig, GAUSSIAN_RSSM_PRESETS),
    "dynamics": Registration(Dynamics, DynamicsConfig, DYNAMICS_PRESETS),
}

PRESETS = ("tiny", "small", "paper")


def _registration(name: str) -> Registration:
    if name not in WORLD_MODELS:
        raise UserError(f"unknown world model {name!r}; choose one of {sorted(WORLD_MODELS)}")
    return WORLD_MODELS[name]


def config_for(name: str, preset: str = "small", **overrides: Any):
    """The config dataclass of world model ``name``: its defaults, then the preset ('tiny' for
    tests, 'small' for a 2-core CPU, 'paper' for the published sizes), then ``overrides``
    (strings such as ``'0.5'`` from ``-o key=value`` are converted to the field's type)."""
    return build_config(_registration(name), preset, overrides)


def make_world_model(name: str, spec: DataSpec, config: Optional[Any] = None) -> WorldModel:
    """Build world model ``name`` for data described by ``spec`` (``config`` defaults to the
    'small' preset)."""
    registration = _registration(name)
    if config is None:
        config = config_for(name, "small")
    if not isinstance(config, registration.config):
        raise UserError(f"world model {name!r} takes a {registration.config.__name__}, got "
                        f"{type(config).__name__}")
    return registration.model(spec, config)
