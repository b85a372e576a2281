"""The world models by name (the names are registered in :data:`wmil.config.WORLD_MODELS`)."""

from __future__ import annotations

import importlib
from typing import Any, Optional

from wmil.config import PRESETS, build_config
from wmil.config import WORLD_MODELS as NAMES
from wmil.errors import UserError
from wmil.types import DataSpec
from wmil.world_models.base import WorldModel


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


#: name -> model class (its ``config_cls`` holds the config, defaults and presets).
WORLD_MODELS: dict[str, type] = {name: _import(path) for name, path in NAMES.items()}

__all__ = ["WORLD_MODELS", "PRESETS", "model_class", "config_for", "make_world_model"]


def model_class(name: str) -> type:
    """The class of world model ``name`` (a one-line UserError for an unknown name)."""
    if name not in WORLD_MODELS:
        raise UserError(f"unknown world model {name!r}; choose one of {sorted(WORLD_MODELS)}")
    return WORLD_MODELS[name]


def config_for(name: str, preset: str = "small", **overrides: Any):
    """The config of world model ``name``: its defaults, then the preset ('tiny' for tests,
    'small' for a 2-core CPU, 'paper' for the published sizes), then ``overrides`` (strings
    such as ``'0.5'`` from ``-o key=value`` are converted to the field's type)."""
    return build_config(model_class(name).config_cls, preset, overrides)


def make_world_model(name: str, spec: DataSpec, config: Optional[Any] = None) -> WorldModel:
    """Build world model ``name`` for data described by ``spec`` (``config`` defaults to the
    'small' preset)."""
    cls = model_class(name)
    if config is None:
        config = config_for(name, "small")
    if not isinstance(config, cls.config_cls):
        raise UserError(f"world model {name!r} takes a {cls.config_cls.__name__}, got {type(config).__name__}")
    return cls(spec, config)
