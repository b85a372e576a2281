"""Config helpers: presets and ``-o key=value`` overrides for any config dataclass."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass, replace
from typing import Any, Mapping

from wmil.errors import UserError
from wmil.world_models.base import _coerce


def override(config: Any, overrides: Mapping[str, Any], where: str = "") -> Any:
    """A copy of dataclass ``config`` with ``overrides`` applied (strings coerced to field types)."""
    valid = {f.name for f in fields(config)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise UserError(f"unknown config field(s) {unknown}{' for ' + where if where else ''}; valid: {sorted(valid)}")
    return replace(config, **{k: _coerce(v, getattr(config, k), k) for k, v in overrides.items()})


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["lr=1e-4", "model.deter=256"]`` → ``{"lr": "1e-4", "model.deter": "256"}``."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"-o {pair!r}: expected key=value, e.g. -o lr=1e-4 or -o model.deter=256")
        out[key.strip()] = value.strip()
    return out


def split_overrides(overrides: Mapping[str, str], groups: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Route ``group.key=value`` to its group; a bare ``key`` to the one group that has it."""
    routed: dict[str, dict[str, str]] = {name: {} for name in groups}
    for key, value in overrides.items():
        group, dot, field = key.partition(".")
        if dot and group in groups:
            routed[group][field] = value
            continue
        owners = [name for name, cfg in groups.items() if key in {f.name for f in fields(cfg)}]
        if len(owners) != 1:
            known = {name: sorted(f.name for f in fields(cfg)) for name, cfg in groups.items()}
            reason = "is ambiguous; prefix it with its group" if owners else "is not a config field"
            raise UserError(f"-o {key}={value}: {key!r} {reason} (fields: {known})")
        routed[owners[0]][key] = value
    return routed


def to_dict(config: Any) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)
