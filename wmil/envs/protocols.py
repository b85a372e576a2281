"""Evaluation protocols for covariate shift: start states the demonstrations rarely or never
visit, random actions, noisy observations — where a policy trained inside a world model should
cope and behaviour cloning drifts (the SQIL paper's S0_train test).

* **shifted starts** (``starts='shifted'``), per environment, set through the environment's own
  state right after its reset, from a generator seeded by the episode's seed (the same episode
  seed gives the same shifted start):

  - CartPole: cart 0.5–1.5 m off centre and pole 0.08–0.15 rad off vertical (either side; the
    standard start is within ±0.05 of upright and centred, which the expert's demos never leave);
  - LunarLander: the standard random start plus a sideways push of 4–6 m/s the way the lander
    drifts already, and a spin of 0.3–0.6 rad/s either way (then one no-op step to observe them):
    sideways speeds of 4–10 m/s where the standard start's are below ~4 (the scripted expert
    still lands: mean return 157 against 274 from standard starts, random −214, 30 episodes);
  - Pendulum: hanging within 0.1 rad of straight down, at rest (the hardest swing-up; the
    standard start is anywhere on the circle with a small velocity).

* **action noise** p: with probability p the executed action is replaced by a uniformly random one.
* **observation noise** σ: Gaussian noise of std σ added to what the policy observes (in the
  observation's units; for uint8 pixels, in units of 255, clipped to 0…255).

:func:`protocol_wrappers` returns the wrappers; :func:`wmil.envs.make_env` puts the start
shift under the observation wrappers (so pixel observations and privileged state show the
shifted state) and the noise outermost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
import numpy as np

from wmil.errors import UserError

STARTS = ("standard", "shifted")


@dataclass(frozen=True)
class Protocol:
    """How evaluation episodes depart from the environment's own (all defaults: they don't)."""

    starts: str = "standard"
    action_noise: float = 0.0
    obs_noise: float = 0.0

    def __post_init__(self):
        if self.starts not in STARTS:
            raise UserError(f"--starts {self.starts!r}: choose one of {list(STARTS)}")
        if not 0.0 <= self.action_noise <= 1.0:
            raise UserError(f"--action-noise {self.action_noise}: a probability in [0, 1]")
        if not (self.obs_noise >= 0.0 and np.isfinite(self.obs_noise)):
            raise UserError(f"--obs-noise {self.obs_noise}: a finite std ≥ 0")

    @property
    def standard(self) -> bool:
        return self == Protocol()

    def describe(self) -> str:
        parts = [f"{self.starts} starts"]
        if self.action_noise:
            parts.append(f"action noise {self.action_noise:g}")
        if self.obs_noise:
            parts.append(f"observation noise {self.obs_noise:g}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"starts": self.starts, "action_noise": self.action_noise, "obs_noise": self.obs_noise}


def _side(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _shift_cartpole(env, rng: np.random.Generator, obs):
    u = env.unwrapped
    x = _side(rng) * rng.uniform(0.5, 1.5)
    theta = _side(rng) * rng.uniform(0.08, 0.15)
    u.state = np.array([x, rng.uniform(-0.05, 0.05), theta, rng.uniform(-0.05, 0.05)], dtype=np.float64)
    return np.array(u.state, dtype=np.float32)


def _shift_lunar(env, rng: np.random.Generator, obs):
    u = env.unwrapped
    vx, vy = u.lander.linearVelocity
    side = float(np.sign(vx)) if vx != 0 else _side(rng)  # push further the way it drifts already
    u.lander.linearVelocity = (float(vx + side * rng.uniform(4.0, 6.0)), float(vy))
    u.lander.angularVelocity = float(_side(rng) * rng.uniform(0.3, 0.6))
    noop = np.zeros(2, np.float32) if u.continuous else 0
    obs, _, _, _, _ = u.step(noop)  # observe the new velocities (LunarLander's reset ends with a step too)
    return obs


def _shift_pendulum(env, rng: np.random.Generator, obs):
    u = env.unwrapped
    u.state = np.array([np.pi + rng.uniform(-0.1, 0.1), 0.0])
    return u._get_obs()


#: Environment id prefix → shifted-start function ``(env, rng, obs) -> new obs``.
SHIFTED_STARTS: dict[str, Callable] = {
    "CartPole": _shift_cartpole,
    "LunarLander": _shift_lunar,
    "Pendulum": _shift_pendulum,
}


def shifted_start(env_id: str) -> Callable:
    """The shifted-start function of ``env_id`` (a one-line error naming those that exist)."""
    base = env_id.split("/")[-1].split("-v")[0]
    if base not in SHIFTED_STARTS:
        raise UserError(f"{env_id} has no shifted-start protocol; environments with one: "
                        f"{', '.join(sorted(SHIFTED_STARTS))} (use --starts standard)")
    return SHIFTED_STARTS[base]


def _episode_rng(seed: Optional[int], salt: int) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else [int(seed), salt])


class ShiftedStarts(gym.Wrapper):
    """Moves every episode's start into the shifted region (see the module docstring)."""

    def __init__(self, env: gym.Env, shift: Callable):
        super().__init__(env)
        self.shift = shift

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.shift(self.env, _episode_rng(seed, 7919), obs), info


class ActionNoise(gym.Wrapper):
    """With probability ``p`` the executed action is a uniformly random one."""

    def __init__(self, env: gym.Env, p: float):
        super().__init__(env)
        self.p = p
        self.rng = _episode_rng(None, 104729)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = _episode_rng(seed, 104729)
            self.env.action_space.seed(int(self.rng.integers(2**31)))
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self.rng.random() < self.p:
            action = self.env.action_space.sample()
        return self.env.step(action)


class ObservationNoise(gym.ObservationWrapper):
    """Gaussian noise of std σ on observations (uint8 pixels: σ in units of 255, clipped)."""

    def __init__(self, env: gym.Env, sigma: float):
        super().__init__(env)
        self.sigma = sigma
        self.rng = _episode_rng(None, 1299709)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.rng = _episode_rng(seed, 1299709)
        return super().reset(seed=seed, options=options)

    def observation(self, observation):
        observation = np.asarray(observation)
        noise = self.rng.normal(0.0, self.sigma, observation.shape)
        if observation.dtype == np.uint8:
            return np.clip(observation + 255.0 * noise, 0, 255).astype(np.uint8)
        return (observation + noise).astype(observation.dtype)


def inner_wrapper(env_id: str, protocol: Optional[Protocol]) -> Optional[Callable[[gym.Env], gym.Env]]:
    """The wrapper that shifts starts (applied right on the made env), or None."""
    if protocol is None or protocol.starts == "standard":
        return None
    shift = shifted_start(env_id)
    return lambda env: ShiftedStarts(env, shift)


def outer_wrappers(protocol: Optional[Protocol]) -> list[Callable[[gym.Env], gym.Env]]:
    """The noise wrappers (applied outermost, on what the policy sees and does)."""
    out: list[Callable] = []
    if protocol is not None and protocol.action_noise > 0:
        out.append(lambda env: ActionNoise(env, protocol.action_noise))
    if protocol is not None and protocol.obs_noise > 0:
        out.append(lambda env: ObservationNoise(env, protocol.obs_noise))
    return out
