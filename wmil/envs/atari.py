"""Standard Atari preprocessing for ALE envs, without OpenCV.

Same behaviour as ``gymnasium.wrappers.AtariPreprocessing`` (which needs ``opencv-python``,
not a wmil dependency): on reset a random number of no-ops in ``[1, noop_max]`` drawn from the
env's seeded generator; each step repeats the action ``frame_skip`` times, sums rewards and
max-pools the last two frames; the screen is resized with area averaging (PIL ``BOX``, the
equivalent of ``cv2.INTER_AREA``) and kept as uint8; losing a life does not end the episode.

Differences, on purpose: observations are channels first, ``(1, N, N)`` in grayscale or
``(3, N, N)`` in colour, and every ``info`` carries ``info["state"]``: the 128-byte console
RAM (uint8) after the step, which scripted experts read.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from wmil.envs.wrappers import resize_frame

#: Frames per second of the Atari 2600's NTSC video output.
ATARI_FPS = 60


class AtariPreprocess(gym.Wrapper):
    """No-op reset, frame skip + max-pool, resize, grayscale; RAM in ``info["state"]``.

    The wrapped env must be an ale-py env made with ``frameskip=1``.
    """

    def __init__(
        self,
        env: gym.Env,
        frame_skip: int = 4,
        screen_size: int = 64,
        grayscale: bool = True,
        noop_max: int = 30,
    ):
        super().__init__(env)
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        if getattr(env.unwrapped, "_frameskip", 1) != 1:
            raise ValueError("make the ALE env with frameskip=1; AtariPreprocess skips frames itself")
        if noop_max > 0 and env.unwrapped.get_action_meanings()[0] != "NOOP":
            raise ValueError("noop_max > 0 needs action 0 to be NOOP")
        self.frame_skip = int(frame_skip)
        self.screen_size = int(screen_size)
        self.grayscale = bool(grayscale)
        self.noop_max = int(noop_max)
        h, w = env.unwrapped.ale.getScreenDims()
        shape = (h, w) if self.grayscale else (h, w, 3)
        self._buf = [np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)]
        c = 1 if self.grayscale else 3
        self.observation_space = spaces.Box(0, 255, (c, self.screen_size, self.screen_size), np.uint8)
        # Videos in real time: the (NTSC) Atari 2600 draws 60 frames/s and one agent step spans
        # frame_skip of them. ale-py declares render_fps 30 whatever its own frameskip, so it is
        # not used here.
        self.metadata = {**env.metadata, "render_fps": ATARI_FPS / self.frame_skip}

    @property
    def ale(self):
        return self.env.unwrapped.ale

    def _grab(self, i: int) -> None:
        if self.grayscale:
            self.ale.getScreenGrayscale(self._buf[i])
        else:
            self.ale.getScreenRGB(self._buf[i])

    def _obs(self) -> np.ndarray:
        frame = self._buf[0]
        if self.frame_skip > 1:
            frame = np.maximum(self._buf[0], self._buf[1])
        return resize_frame(frame, self.screen_size, self.grayscale, resample="box")

    def _state(self) -> np.ndarray:
        return np.array(self.ale.getRAM(), dtype=np.uint8, copy=True)

    def reset(self, *, seed=None, options=None):
        _, info = self.env.reset(seed=seed, options=options)
        info = dict(info)
        noops = int(self.env.unwrapped.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
        for _ in range(noops):
            _, _, terminated, truncated, step_info = self.env.step(0)
            info.update(step_info)
            if terminated or truncated:
                _, info = self.env.reset(seed=seed, options=options)
                info = dict(info)
        self._grab(0)
        self._buf[1].fill(0)
        info["state"] = self._state()
        return self._obs(), info

    def step(self, action):
        total, terminated, truncated, info = 0.0, False, False, {}
        for t in range(self.frame_skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                # Show the final screen rather than a stale one.
                self._grab(0)
                self._buf[1][...] = self._buf[0]
                break
            if t == self.frame_skip - 2:
                self._grab(1)
            elif t == self.frame_skip - 1:
                self._grab(0)
        info = dict(info)
        info["state"] = self._state()
        return self._obs(), total, terminated, truncated, info
