"""The config layer (wmil.config): every field validated once, in one message style; coercion of
``-o`` strings by the field's type; defaults → component defaults → preset → overrides; and
``wmil config show``."""

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

import pytest

from cli.main import main as wmil_main
from wmil.config import (Config, Discount, NonNegFloat, PosFloat, PosInt, Prob, build_config, coerce, describe,
                         split_overrides)
from wmil.errors import UserError


@dataclass(frozen=True)
class Demo(Config):
    size: PosInt = 3
    """A size."""
    rate: PosFloat = 0.1
    """A rate."""
    weight: NonNegFloat = 0.0
    """A weight."""
    p: Prob = 0.5
    """A probability."""
    gamma: Discount = 0.9
    """A discount."""
    kind: Literal["a", "b"] = "a"
    """A choice."""
    flag: bool = False
    """A switch."""
    maybe: Optional[Prob] = None
    """Optional."""
    ratio: float = 1.0
    """Any finite number."""

    DEFAULTS: ClassVar = dict(size=4)
    PRESETS: ClassVar = {"tiny": dict(rate=0.5), "small": dict(), "paper": dict(size=9)}


@pytest.mark.parametrize("field, value, message", [
    ("size", 0, "size=0 must be at least 1"),
    ("size", 2.5, "size=2.5 must be a whole number"),
    ("size", True, "size=True must be a whole number"),
    ("rate", 0.0, "rate=0.0 must be greater than 0"),
    ("rate", -1e-3, "rate=-0.001 must be greater than 0"),
    ("rate", math.nan, "rate=nan must be finite"),
    ("rate", math.inf, "rate=inf must be finite"),
    ("rate", "fast", "rate='fast' must be a number"),
    ("weight", -1.0, "weight=-1.0 must be at least 0"),
    ("p", 1.5, r"p=1.5 must be in \[0, 1\]"),
    ("gamma", 0.0, r"gamma=0.0 must be in \(0, 1\]"),
    ("gamma", 1.01, r"gamma=1.01 must be in \(0, 1\]"),
    ("kind", "c", r"kind='c' is not one of \['a', 'b'\]"),
    ("flag", 1, "flag=1 must be true or false"),
    ("maybe", 2.0, r"maybe=2.0 must be in \[0, 1\]"),
    ("ratio", None, "ratio=None must be set"),
])
def test_every_field_is_validated_in_one_style(field, value, message):
    with pytest.raises(UserError, match=f"^Demo field '{field}': {message}"):
        Demo(**{field: value})


def test_valid_values_pass_and_optional_takes_none():
    config = Demo(size=1, rate=1e-9, weight=0, p=1, gamma=1.0, kind="b", flag=True, maybe=None, ratio=-3)
    assert config.weight == 0 and config.maybe is None


def test_coercion_follows_the_annotation():
    assert coerce(Demo, "size", "7") == 7 and coerce(Demo, "rate", "1e-4") == 1e-4
    assert coerce(Demo, "flag", "yes") is True and coerce(Demo, "flag", "0") is False
    assert coerce(Demo, "maybe", "none") is None and coerce(Demo, "maybe", "0.3") == 0.3
    assert coerce(Demo, "kind", "b") == "b" and coerce(Demo, "size", 5) == 5
    with pytest.raises(UserError, match="Demo field 'size': cannot read '1.5' as int"):
        coerce(Demo, "size", "1.5")
    with pytest.raises(UserError, match="cannot read 'maybe' as bool"):
        coerce(Demo, "flag", "maybe")


def test_defaults_then_component_defaults_then_preset_then_overrides():
    assert Demo().size == 3                                          # the field's own default
    assert build_config(Demo, "small").size == 4                     # the component's DEFAULTS
    assert build_config(Demo, "paper").size == 9                     # the preset
    assert build_config(Demo, "paper", {"size": "11"}).size == 11    # the override, coerced
    assert Demo.preset("tiny").rate == 0.5
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        build_config(Demo, "huge")
    with pytest.raises(UserError, match=r"unknown config field\(s\) \['nope'\].*wmil config show"):
        build_config(Demo, "small", {"nope": "1"})
    with pytest.raises(UserError, match="size=0 must be at least 1"):     # validated after the overrides
        build_config(Demo, "small", {"size": "0"})


def test_overrides_route_to_their_group():
    @dataclass(frozen=True)
    class Other(Config):
        size: PosInt = 1
        """Also a size."""
        steps: PosInt = 1
        """Steps."""

    routed = split_overrides({"steps": "3", "demo.size": "2", "other.size": "5"}, {"demo": Demo, "other": Other})
    assert routed == {"demo": {"size": "2"}, "other": {"steps": "3", "size": "5"}}
    with pytest.raises(UserError, match="'size' is ambiguous"):
        split_overrides({"size": "2"}, {"demo": Demo, "other": Other})


def test_describe_lists_value_type_and_doc():
    rows = {name: (value, accepted, doc) for name, value, accepted, doc in describe(build_config(Demo, "small"))}
    assert rows["size"] == (4, "int at least 1", "A size.")
    assert rows["gamma"][1] == "float in (0, 1]" and rows["kind"][1] == "one of 'a', 'b'"
    assert rows["maybe"][1] == "float in [0, 1] or None"


def test_every_component_config_is_typed_and_documented():
    """No field of any registered config escapes validation: each has a type the layer checks."""
    from wmil.algos.base import ALGORITHMS, algorithm_class
    from wmil.config import PRESETS
    from wmil.train.policy import ImagineTrainConfig
    from wmil.train.world_model import WorldModelTrainConfig
    from wmil.world_models.registry import WORLD_MODELS

    classes = [algorithm_class(a).config_cls for a in ALGORITHMS] + [m.config_cls for m in WORLD_MODELS.values()]
    for cls in classes + [ImagineTrainConfig, WorldModelTrainConfig]:
        for preset in PRESETS:
            for name, _, accepted, doc in describe(build_config(cls, preset)):
                assert doc, f"{cls.__name__}.{name} has no docstring"
                assert accepted.split()[0] in ("int", "float", "bool", "str", "one", "list"), (cls.__name__, name, accepted)


def test_config_show_cli(capsys):
    assert wmil_main(["config", "show", "ditto", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ditto (DittoConfig), preset 'tiny':" in out and "horizon = 5   [int at least 1]" in out
    assert wmil_main(["config", "show", "sqil"]) == 0
    assert "gamma = 0.99   [float in (0, 1]]   (this component's default" in capsys.readouterr().out
    assert wmil_main(["config", "show", "rssm", "-o", "deter=64"]) == 0
    assert "deter = 64" in capsys.readouterr().out
    assert wmil_main(["config", "show", "train-model", "--preset", "paper"]) == 0
    assert "steps = 100000" in capsys.readouterr().out
    assert wmil_main(["config", "show", "dreamer"]) == 2
    assert "name an algorithm" in capsys.readouterr().err
    assert wmil_main(["config", "show", "ditto", "-o", "gamma=2"]) == 2
    assert "gamma=2.0 must be in (0, 1]" in capsys.readouterr().err
