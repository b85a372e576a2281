"""Environment construction: one :func:`make_env` for every gymnasium task wmil uses.

Observations the returned env produces:

- vector tasks: a flat float32 ``Box`` (float64 observations are cast);
- goal-conditioned dict tasks (gymnasium-robotics Fetch): one float32 vector
  ``concat(observation, desired_goal)``, in that order (Fetch: 10+3 = 13 for Reach,
  25+3 = 28 for Push / PickAndPlace); ``info["is_success"]`` is a float at every step;
- ``pixels=N``: ``env.render()`` resized to N x N with PIL (Lanczos), uint8, channels first
  ``(C, N, N)``, C = 1 with ``grayscale`` else 3;
- MinAtar (``MinAtar/...``): the game's 10×10 grid as uint8 ``(C, 10, 10)`` in {0, 255}
  (:mod:`wmil.envs.minatar`);
- ALE (``ALE/...``): standard Atari preprocessing (no-op reset up to 30, frame skip 4 with
  max-pooling, area resize; v5 sticky actions kept), uint8 ``(C, N, N)`` with N = ``pixels``
  or 64, grayscale unless ``grayscale=False``.

Every reset and step ``info`` carries ``info["state"]``, a 1-D numpy array with the privileged
simulator state that scripted experts act on, taken before any pixel transformation:

- vector tasks: the raw observation, flattened, in its own dtype;
- goal dicts: ``concat(observation, achieved_goal, desired_goal)`` (float64; Fetch Push:
  25 + 3 + 3 = 31);
- ALE: the 128-byte console RAM, uint8;
- MinAtar: the game's internal variables and maps (:func:`wmil.envs.minatar.game_state`).

``import wmil.envs`` imports neither gymnasium nor any simulator; ``ale_py`` and
``gymnasium_robotics`` are imported only when an id needs them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from wmil.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wmil.envs.protocols import Protocol
    import gymnasium

__all__ = ["EnvConfig", "make_env", "env_config_from_dict", "DEFAULT_ALE_PIXELS"]

DEFAULT_ALE_PIXELS = 64


def _freeze(value: Any) -> Any:
    """Lists/dicts from YAML -> tuples so the config stays hashable."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to build and how to present its observations."""

    env_id: str
    """Any gymnasium id, e.g. "CartPole-v1", "ALE/Pong-v5", "FetchPush-v4"."""
    pixels: int | None = None
    """None: native vector observations (ALE: 64); N: render to N x N uint8 images."""
    grayscale: bool | None = None
    """With pixels: 1 channel instead of 3. None = the env family's default (ALE: True, else False)."""
    max_episode_steps: int | None = None
    """Overrides the registered time limit (ALE: counts agent steps, i.e. after frame skip)."""
    kwargs: tuple = field(default=())
    """Extra gym.make kwargs as (key, value) pairs (a dict is accepted and converted)."""

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id.strip():
            raise UserError(f"env_id must be a non-empty gymnasium id, got {self.env_id!r}")
        if self.pixels is not None and (
            isinstance(self.pixels, bool) or not isinstance(self.pixels, int) or self.pixels < 8
        ):
            raise UserError(f"pixels must be None or an int >= 8, got {self.pixels!r}")
        if self.grayscale is not None and not isinstance(self.grayscale, bool):
            raise UserError(f"grayscale must be true, false or null, got {self.grayscale!r}")
        if self.max_episode_steps is not None and (
            isinstance(self.max_episode_steps, bool)
            or not isinstance(self.max_episode_steps, int)
            or self.max_episode_steps < 1
        ):
            raise UserError(f"max_episode_steps must be None or a positive int, got {self.max_episode_steps!r}")
        kw = self.kwargs
        if isinstance(kw, Mapping):
            kw = kw.items()
        try:
            pairs = tuple((str(k), _freeze(v)) for k, v in kw)
        except (TypeError, ValueError):
            raise UserError(f"kwargs must be a mapping or (key, value) pairs, got {self.kwargs!r}") from None
        object.__setattr__(self, "kwargs", tuple(sorted(pairs)))

    @property
    def is_ale(self) -> bool:
        """True for ``ALE/...`` ids."""
        return self.env_id.startswith("ALE/")

    @property
    def use_grayscale(self) -> bool:
        """The resolved grayscale flag (ALE defaults to grayscale)."""
        if self.grayscale is None:
            return self.is_ale
        return self.grayscale

    def make_kwargs(self) -> dict[str, Any]:
        """The extra gym.make kwargs as a dict."""
        return {k: v for k, v in self.kwargs}

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able dict; ``env_config_from_dict`` inverts it."""
        return {
            "env_id": self.env_id,
            "pixels": self.pixels,
            "grayscale": self.grayscale,
            "max_episode_steps": self.max_episode_steps,
            "kwargs": {k: _thaw(v) for k, v in self.kwargs},
        }


def env_config_from_dict(d: Mapping[str, Any]) -> EnvConfig:
    """Build an :class:`EnvConfig` from a dict (YAML/JSON); unknown keys are a UserError."""
    if not isinstance(d, Mapping):
        raise UserError(f"an env config must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise UserError(f"unknown env config field(s) {unknown}; allowed: {sorted(names)}")
    if "env_id" not in d:
        raise UserError("env config needs 'env_id' (a gymnasium id such as 'CartPole-v1')")
    data = dict(d)
    if data.get("kwargs") is None:
        data["kwargs"] = ()
    return EnvConfig(**data)


def _is_mujoco_entry_point(env_id: str) -> bool:
    import gymnasium as gym

    spec = gym.envs.registry.get(env_id)
    ep = getattr(spec, "entry_point", None)
    if ep is None:
        return False
    name = ep if isinstance(ep, str) else f"{getattr(ep, '__module__', '')}.{getattr(ep, '__name__', '')}"
    return "mujoco" in name.lower() or "gymnasium_robotics" in name.lower()


def _prepare_headless_mujoco() -> None:
    """Select OSMesa for MuJoCo rendering unless the user chose a GL backend already.

    gymnasium reads ``MUJOCO_GL`` when it creates its renderer; PyOpenGL fixes its platform at
    its first import, so ``PYOPENGL_PLATFORM`` is set alongside. Called only for MuJoCo envs
    with pixel observations, so vector MuJoCo envs never depend on a GL library.
    """
    import ctypes.util

    backend = os.environ.get("MUJOCO_GL")
    if backend is None:
        if ctypes.util.find_library("OSMesa") is None:
            raise UserError(
                "MuJoCo pixel observations need a headless GL: install OSMesa "
                "(apt-get install libosmesa6) or set MUJOCO_GL=egl on a GPU machine"
            )
        os.environ["MUJOCO_GL"] = "osmesa"
        backend = "osmesa"
    if backend in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)


def _check_action_space(config: EnvConfig, env: "gymnasium.Env") -> None:
    from gymnasium import spaces

    if not isinstance(env.action_space, (spaces.Box, spaces.Discrete)):
        env.close()
        raise UserError(
            f"{config.env_id}: unsupported action space {env.action_space}; wmil supports Box and Discrete actions"
        )
    if isinstance(env.action_space, spaces.Box) and len(env.action_space.shape) != 1:
        env.close()
        raise UserError(f"{config.env_id}: unsupported action space {env.action_space}; Box actions must be 1-D")


def _gym_make(config: EnvConfig, **extra: Any) -> "gymnasium.Env":
    import gymnasium as gym

    kwargs = config.make_kwargs()
    kwargs.update(extra)
    try:
        return gym.make(config.env_id, **kwargs)
    except gym.error.DependencyNotInstalled as e:
        raise UserError(f"{config.env_id}: missing dependency: {str(e).splitlines()[0]}") from None
    except (gym.error.Error, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"could not make {config.env_id!r} with kwargs {kwargs}: {msg}") from None


def _make_ale(config: EnvConfig) -> "gymnasium.Env":
    import gymnasium as gym

    from wmil.envs.atari import AtariPreprocess

    env = _gym_make(config, frameskip=1)
    _check_action_space(config, env)
    env = AtariPreprocess(
        env,
        frame_skip=4,
        screen_size=config.pixels or DEFAULT_ALE_PIXELS,
        grayscale=config.use_grayscale,
        noop_max=30,
    )
    if config.max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, config.max_episode_steps)
    return env


def make_env(config: EnvConfig, protocol: Optional["Protocol"] = None) -> "gymnasium.Env":
    """Build the gymnasium env described by ``config`` (see the module docstring), under the
    evaluation ``protocol`` (:mod:`wmil.envs.protocols`: shifted starts, action and observation
    noise; None: the environment's own).

    Picklable as ``functools.partial(make_env, config, protocol)``, so it works as an env factory
    of ``gymnasium.vector.SyncVectorEnv`` / ``AsyncVectorEnv``.
    """
    from wmil.envs.protocols import inner_wrapper, outer_wrappers

    if isinstance(config, Mapping):
        config = env_config_from_dict(config)
    if not isinstance(config, EnvConfig):
        raise UserError(f"make_env needs an EnvConfig, got {type(config).__name__}")
    shift = inner_wrapper(config.env_id, protocol)  # checks the env has the protocol before making it
    env = _make(config, shift)
    for wrap in outer_wrappers(protocol):
        env = wrap(env)
    return env


def _make(config: EnvConfig, shift) -> "gymnasium.Env":
    from wmil.envs.registry import ensure_registered

    ensure_registered(config.env_id)
    if config.is_ale:
        return _make_ale(config)
    if config.env_id.startswith("MinAtar/"):
        from wmil.envs.minatar import make_minatar

        return make_minatar(config)

    from gymnasium import spaces

    from wmil.envs.wrappers import FlattenGoalObs, Float32Obs, PixelObs, StateInfo, is_goal_dict

    extra: dict[str, Any] = {}
    if config.max_episode_steps is not None:
        extra["max_episode_steps"] = config.max_episode_steps
    if config.pixels is not None:
        extra["render_mode"] = "rgb_array"
    if config.pixels is not None or config.make_kwargs().get("render_mode") in ("rgb_array", "rgb_array_list"):
        # Rendering (for observations, or for videos of a vector-observation env) must be headless.
        if ":" not in config.env_id and _is_mujoco_entry_point(config.env_id):
            _prepare_headless_mujoco()
        else:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    env = None
    if config.pixels is not None and ":" not in config.env_id and _is_mujoco_entry_point(config.env_id):
        user = config.make_kwargs()
        if "width" not in user and "height" not in user:
            # Software GL cost grows with the frame size: render at 2N (enough for a clean
            # antialiased downscale) instead of MuJoCo's default 480 x 480.
            size = max(2 * config.pixels, 64)
            try:
                env = _gym_make(config, width=size, height=size, **extra)
            except UserError:
                env = None  # this env takes no width/height: fall back to its defaults
    if env is None:
        env = _gym_make(config, **extra)
    _check_action_space(config, env)

    obs_space = env.observation_space
    if config.pixels is None:
        if isinstance(obs_space, spaces.Box):
            if obs_space.dtype == "uint8" and len(obs_space.shape) == 3:
                env.close()
                raise UserError(
                    f"{config.env_id}: observations are images {obs_space}; ask for them with pixels=N"
                )
        elif not is_goal_dict(obs_space):
            env.close()
            raise UserError(
                f"{config.env_id}: unsupported observation space {obs_space}; wmil supports Box, "
                f"goal dicts (observation/achieved_goal/desired_goal), or pixels=N for any env that renders"
            )
    elif "rgb_array" not in env.metadata.get("render_modes", []):
        env.close()
        raise UserError(f"{config.env_id} cannot render 'rgb_array' images; use pixels=None")

    if shift is not None:  # under the observation wrappers: they observe the shifted state
        env = shift(env)
    env = StateInfo(env)
    if config.pixels is not None:
        return PixelObs(env, config.pixels, config.use_grayscale)
    if is_goal_dict(obs_space):
        return FlattenGoalObs(env)
    return Float32Obs(env)
