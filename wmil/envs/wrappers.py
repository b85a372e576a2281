"""Observation wrappers used by :func:`wmil.envs.make_env`.

Wrapping order (innermost first)::

    gym.make(...)  ->  StateInfo  ->  FlattenGoalObs | Float32Obs | PixelObs

``StateInfo`` sits directly on the raw env so ``info["state"]`` is always the simulator's
own observation, before any flattening, casting or rendering.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def is_goal_dict(space: gym.Space) -> bool:
    """True for gymnasium-robotics style goal dicts (observation / achieved / desired goal)."""
    return isinstance(space, spaces.Dict) and all(
        k in space.spaces and isinstance(space.spaces[k], spaces.Box) for k in GOAL_KEYS
    )


def flatten_state(space: gym.Space, obs: Any) -> np.ndarray:
    """The privileged 1-D state vector of one raw observation.

    - ``Box``: the observation, flattened, in its own dtype.
    - goal dict: ``concat(observation, achieved_goal, desired_goal)`` (float64).
    - anything else (only reachable with pixel observations): ``gymnasium.spaces.flatten``.
    """
    if isinstance(space, spaces.Box):
        return np.array(obs, copy=True).reshape(-1)
    if is_goal_dict(space):
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).reshape(-1) for k in GOAL_KEYS])
    return np.asarray(spaces.flatten(space, obs)).reshape(-1)


class StateInfo(gym.Wrapper):
    """Puts the raw observation, flattened, into ``info["state"]`` at every reset and step."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._raw_space = env.observation_space

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        info["state"] = flatten_state(self._raw_space, obs)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["state"] = flatten_state(self._raw_space, obs)
        return obs, reward, terminated, truncated, info


class FlattenGoalObs(gym.ObservationWrapper):
    """Goal dict -> one float32 vector ``concat(observation, desired_goal)``.

    ``achieved_goal`` is left out of the observation (it is a function of ``observation``
    for the Fetch tasks) but kept in ``info["state"]``. ``info["is_success"]`` is a float at
    every step and, where the env can compute it, also at reset.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        obs_space = env.observation_space.spaces["observation"]
        goal_space = env.observation_space.spaces["desired_goal"]
        low = np.concatenate([obs_space.low.reshape(-1), goal_space.low.reshape(-1)])
        high = np.concatenate([obs_space.high.reshape(-1), goal_space.high.reshape(-1)])
        self.observation_space = spaces.Box(
            low.astype(np.float32), high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation):
        return np.concatenate(
            [
                np.asarray(observation["observation"], dtype=np.float32).reshape(-1),
                np.asarray(observation["desired_goal"], dtype=np.float32).reshape(-1),
            ]
        )

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        info = dict(info)
        if "is_success" not in info:
            check = getattr(self.env.unwrapped, "_is_success", None)
            if check is not None:
                info["is_success"] = float(check(obs["achieved_goal"], obs["desired_goal"]))
        elif info["is_success"] is not None:
            info["is_success"] = float(info["is_success"])
        return self.observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        if "is_success" in info:
            info["is_success"] = float(info["is_success"])
        return self.observation(obs), reward, terminated, truncated, info


class Float32Obs(gym.ObservationWrapper):
    """Box observation -> flat float32 vector (float64 is cast, multi-dim arrays flattened)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = spaces.Box(
            np.asarray(space.low, dtype=np.float32).reshape(-1),
            np.asarray(space.high, dtype=np.float32).reshape(-1),
            dtype=np.float32,
        )

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32).reshape(-1)


def resize_frame(frame: np.ndarray, size: int, grayscale: bool, resample: str = "lanczos") -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` uint8 frame -> ``(C, size, size)`` uint8, channels first.

    Resized with PIL (antialiased: Lanczos by default, "box" = area averaging); grayscale uses
    PIL's ITU-R 601-2 luma. Non-square frames are squeezed to a square (no cropping).
    """
    from PIL import Image

    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    img = Image.fromarray(frame)
    if grayscale and img.mode != "L":
        img = img.convert("L")
    elif not grayscale and img.mode != "RGB":
        img = img.convert("RGB")
    filt = Image.Resampling.BOX if resample == "box" else Image.Resampling.LANCZOS
    if img.size != (size, size):
        img = img.resize((size, size), filt)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        return arr[None].copy()
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class PixelObs(gym.ObservationWrapper):
    """Replaces the observation with ``env.render()`` resized to ``(C, N, N)`` uint8.

    The env must have been made with ``render_mode="rgb_array"``. ``C`` is 1 with grayscale,
    else 3.
    """

    def __init__(self, env: gym.Env, size: int, grayscale: bool = False):
        super().__init__(env)
        self.size = int(size)
        self.grayscale = bool(grayscale)
        c = 1 if self.grayscale else 3
        self.observation_space = spaces.Box(0, 255, (c, self.size, self.size), dtype=np.uint8)

    def observation(self, observation):
        frame = self.env.render()
        if frame is None:
            raise RuntimeError("env.render() returned None; was the env made with render_mode='rgb_array'?")
        return resize_frame(frame, self.size, self.grayscale)
