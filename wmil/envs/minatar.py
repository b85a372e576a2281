"""MinAtar (Young & Tian 2019): Atari games in miniature on a 10×10 grid, one binary channel per
object type, sticky actions (p = 0.1), registered in gymnasium as ``MinAtar/<Game>-v1``
(minimal action sets) by the ``minatar`` package (``pip install 'wmil[minatar]'``).

What :func:`make_minatar` returns, on top of ``gym.make(id)``:

- observations ``(C, 10, 10)`` uint8 in {0, 255}, channels first, converted from the game's
  ``(10, 10, C)`` bool grid by :func:`grid_to_image`: wmil's image path (lossless storage,
  ``preprocess_pixels`` to [-0.5, 0.5], videos) then needs nothing MinAtar-specific. A deployed
  policy given the raw game's bool grid applies the same conversion (:func:`as_model_obs`);
- ``info["state"]``: the game's privileged state as one float64 vector (:func:`game_state`;
  layouts per game in :data:`STATE_LAYOUTS`), which the scripted experts act on;
- ``render()`` (``render_mode="rgb_array"``): the grid drawn as an RGB image, each cell
  :data:`CELL` pixels wide, one colour per channel (the package's own ``rgb_array`` is a float
  10×10 image, too small to see and not uint8).

Episodes have no time limit in MinAtar; recipes set one (``max_episode_steps``), since a good
Breakout or Asterix player can play for ever.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from wmil.errors import UserError

PREFIX = "MinAtar/"
#: Pixels per grid cell in rendered frames (10×10 grid -> 160×160 frames).
CELL = 16
#: Frames per second of videos (MinAtar has no native rate; 10 steps/s is easy to follow).
RENDER_FPS = 10

#: Channel colours (RGB), in channel order; a cell showing several channels takes the last one's
#: colour, as MinAtar's own display does.
PALETTE = np.array([
    [241, 196, 15],    # yellow
    [231, 76, 60],     # red
    [52, 152, 219],    # blue
    [46, 204, 113],    # green
    [155, 89, 182],    # purple
    [236, 240, 241],   # white
    [230, 126, 34],    # orange
    [26, 188, 156],    # teal
    [149, 165, 166],   # grey
    [192, 57, 43],     # dark red
], dtype=np.uint8)


def is_minatar_id(env_id: str) -> bool:
    """True for ``MinAtar/...`` ids."""
    return isinstance(env_id, str) and env_id.startswith(PREFIX)


def register() -> None:
    """Register the ``MinAtar/<Game>-v0/-v1`` ids (a one-line error when minatar is missing)."""
    try:
        from minatar.gym import register_envs
    except ImportError as e:
        raise UserError(f"MinAtar environments need the minatar package: pip install 'wmil[minatar]' ({e})") from None
    if "MinAtar/Breakout-v1" not in gym.envs.registry:
        register_envs()


def grid_to_image(grid: np.ndarray) -> np.ndarray:
    """The game's ``(..., H, W, C)`` bool grid -> ``(..., C, H, W)`` uint8 in {0, 255}."""
    grid = np.asarray(grid)
    return np.ascontiguousarray(np.moveaxis(grid, -1, -3).astype(np.uint8) * np.uint8(255))


def as_model_obs(obs: Any, obs_shape: tuple[int, ...]) -> np.ndarray:
    """An observation for a model that expects ``obs_shape``: a MinAtar bool grid ``(H, W, C)``
    (the raw game's) is converted as recording did; anything else is returned as an array."""
    obs = np.asarray(obs)
    if (obs.dtype == np.bool_ and len(obs_shape) == 3 and obs.ndim == 3
            and obs.shape == (obs_shape[1], obs_shape[2], obs_shape[0])):
        return grid_to_image(obs)
    return obs


def render_grid(image: np.ndarray, cell: int = CELL) -> np.ndarray:
    """``(C, H, W)`` channel image, uint8 (255 = on; a model's predicted probability × 255 draws
    dimmer) -> ``(H·cell, W·cell, 3)`` RGB uint8: black background, one colour per channel (the
    brightest wins where channels overlap), thin grid lines so cells stay countable."""
    level = np.asarray(image, dtype=np.float32) / 255.0                 # (C, H, W) in [0, 1]
    colours = PALETTE[np.arange(level.shape[0]) % len(PALETTE)].astype(np.float32)   # (C, 3)
    rgb = (level[..., None] * colours[:, None, None, :]).max(0)         # (H, W, 3)
    big = np.repeat(np.repeat(rgb.round().astype(np.uint8), cell, 0), cell, 1)
    if cell >= 4:
        big[::cell, :, :] = np.maximum(big[::cell, :, :], 40)
        big[:, ::cell, :] = np.maximum(big[:, ::cell, :], 40)
    return big


# ------------------------------------------------------------------------------------ state

#: Per game, the scalar fields of the privileged state vector, in order; the game's maps follow
#: (flattened row-major, 10×10 each) and, for Asterix, 8 entity slots of (x, y, moving right,
#: gold), all -1 for an empty slot.
STATE_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "breakout": (("ball_x", "ball_y", "ball_dir", "pos", "strike", "last_x", "last_y"), ("brick_map",)),
    "space_invaders": (("pos", "alien_dir", "enemy_move_interval", "alien_move_timer", "alien_shot_timer",
                        "shot_timer", "ramp_index"), ("alien_map", "f_bullet_map", "e_bullet_map")),
    "asterix": (("player_x", "player_y", "spawn_speed", "spawn_timer", "move_speed", "move_timer", "ramp_timer",
                 "ramp_index"), ()),
}
ASTERIX_SLOTS = 8


def game_state(game) -> np.ndarray:
    """The privileged state of a MinAtar game object (``env.unwrapped.game.env``) as float64 ``(N,)``
    (:data:`STATE_LAYOUTS`); games without a layout give their grid, flattened."""
    name = type(game).__module__.rsplit(".", 1)[-1]
    if name not in STATE_LAYOUTS:
        return np.asarray(game.state(), dtype=np.float64).reshape(-1)
    scalars, maps = STATE_LAYOUTS[name]
    parts = [np.array([float(getattr(game, f)) for f in scalars])]
    parts += [np.asarray(getattr(game, m), dtype=np.float64).reshape(-1) for m in maps]
    if name == "asterix":
        slots = np.full((ASTERIX_SLOTS, 4), -1.0)
        for i, e in enumerate(game.entities):
            if e is not None:
                slots[i] = [e[0], e[1], float(e[2]), float(e[3])]
        parts.append(slots.reshape(-1))
    return np.concatenate(parts)


def restore_game(name: str, state: np.ndarray):
    """A MinAtar game object of game ``name`` set to the privileged ``state`` (inverse of
    :func:`game_state`), for experts that simulate ahead. Its random generator is fresh."""
    import importlib

    module = importlib.import_module(f"minatar.environments.{name}")
    game = module.Env()
    state = np.asarray(state, dtype=np.float64)
    scalars, maps = STATE_LAYOUTS[name]
    for i, f in enumerate(scalars):
        value = state[i]
        setattr(game, f, bool(value) if f == "strike" else int(value))
    offset = len(scalars)
    for m in maps:
        setattr(game, m, state[offset:offset + 100].reshape(10, 10).copy())
        offset += 100
    if name == "asterix":
        slots = state[offset:offset + 4 * ASTERIX_SLOTS].reshape(ASTERIX_SLOTS, 4)
        game.entities = [None if s[0] < 0 else [int(s[0]), int(s[1]), bool(s[2]), bool(s[3])] for s in slots]
    game.terminal = False
    return game


class MinAtarObs(gym.Wrapper):
    """Channels-first uint8 observations, the privileged state in ``info["state"]`` and a visible
    RGB ``render()`` (see the module docstring)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        H, W, C = env.observation_space.shape
        self.observation_space = spaces.Box(0, 255, (C, H, W), np.uint8)
        self.metadata = {**env.metadata, "render_fps": RENDER_FPS}
        self._image = np.zeros((C, H, W), np.uint8)

    @property
    def game(self):
        """The game object (``minatar.environments.<game>.Env``)."""
        return self.env.unwrapped.game.env

    def _convert(self, grid) -> np.ndarray:
        self._image = grid_to_image(grid)
        return self._image

    def reset(self, *, seed=None, options=None):
        grid, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        info["state"] = game_state(self.game)
        return self._convert(grid), info

    def step(self, action):
        grid, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["state"] = game_state(self.game)
        return self._convert(grid), float(reward), terminated, truncated, info

    def render(self):
        if self.env.unwrapped.render_mode != "rgb_array":
            return self.env.render()
        return render_grid(self._image)


def make_minatar(config) -> gym.Env:
    """The env of ``config`` (an :class:`wmil.envs.EnvConfig` with a ``MinAtar/`` id)."""
    from wmil.envs import _check_action_space, _gym_make

    if config.pixels is not None:
        raise UserError(f"{config.env_id}: MinAtar observations are the game's own 10×10 grid; leave pixels unset")
    extra: dict[str, Any] = {}
    if config.max_episode_steps is not None:
        extra["max_episode_steps"] = config.max_episode_steps
    env = _gym_make(config, **extra)
    _check_action_space(config, env)
    return MinAtarObs(env)
