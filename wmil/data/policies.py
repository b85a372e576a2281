"""Policies that generate data: random, scripted experts (optionally ε-noisy), user policies.

A :class:`Policy` is created once per environment copy. ``reset(rng)`` is called at the start
of every episode with that episode's own generator (seeded from the dataset seed and the
episode index), so an episode's content depends only on its index, not on which worker ran it.
``act(obs, state)`` gets the observation the dataset stores and the privileged simulator state
``info["state"]`` (only experts look at it).

Policy strings (CLI ``--policy``):
  ``random``                 uniform over the action space
  ``expert``                 the scripted expert of the env (see ``wmil.data.experts``)
  ``module.path:callable``   ``callable(obs) -> action`` (a class is instantiated first)
  ``path/to/policy.pt2``     a ``torch.export`` program (``torch.export.save``) mapping a (1, *O)
                             float tensor to logits/action — the successor of TorchScript
  ``path/to/policy.pt``      a TorchScript module, same signature (deprecated by torch 2.13 but read)
  ``path/to/model.zip``      a stable-baselines3 model (needs ``stable-baselines3`` installed)
With ``epsilon`` > 0 the chosen action is replaced by a uniform random one with probability ε
(discrete), or perturbed by Gaussian noise of std ε·(high − low)/2 and clipped (continuous).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np

from wmil.errors import UserError


class Policy:
    """Base class: a policy for one environment copy."""

    description = "policy"
    needs_state = False
    #: Random numbers are drawn in blocks: one numpy call per step costs more than a CartPole step.
    BLOCK = 256

    def __init__(self, action_space: gym.Space):
        self.action_space = action_space
        Policy.reset(self, np.random.default_rng(0))  # not the subclass's: its parts come later

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._actions, self._uniforms = [], []

    def act(self, obs: np.ndarray, state: Optional[np.ndarray]) -> Any:
        raise NotImplementedError

    def random_action(self) -> Any:
        """A uniform random action (from the episode's generator, drawn a block at a time)."""
        if not self._actions:
            space = self.action_space
            if isinstance(space, gym.spaces.Discrete):
                block = (int(space.start) + self.rng.integers(space.n, size=self.BLOCK)).tolist()
            else:
                block = list(self.rng.uniform(space.low, space.high, size=(self.BLOCK, *space.shape)).astype(space.dtype))
            self._actions = block[::-1]
        return self._actions.pop()

    def uniform(self) -> float:
        """A uniform number in [0, 1) (drawn a block at a time)."""
        if not self._uniforms:
            self._uniforms = self.rng.random(self.BLOCK).tolist()[::-1]
        return self._uniforms.pop()


class RandomPolicy(Policy):
    description = "random"

    def act(self, obs, state):
        return self.random_action()


class ExpertPolicy(Policy):
    needs_state = True

    def __init__(self, action_space: gym.Space, env_id: str):
        super().__init__(action_space)
        from wmil.data.experts import make_expert

        self.expert = make_expert(env_id)
        self.description = f"expert({env_id})"

    def reset(self, rng):
        super().reset(rng)
        self.expert.reset(rng)

    def act(self, obs, state):
        return self.expert.act(state)


class CallablePolicy(Policy):
    def __init__(self, action_space: gym.Space, fn: Callable, description: str):
        super().__init__(action_space)
        self.fn = fn
        self.description = description

    def act(self, obs, state):
        return _coerce_action(self.fn(obs), self.action_space, self.description)


class EpsilonPolicy(Policy):
    """ε-noisy wrapper: uniform random (discrete) or Gaussian-perturbed (continuous) actions."""

    def __init__(self, inner: Policy, epsilon: float):
        super().__init__(inner.action_space)
        self.inner = inner
        self.epsilon = float(epsilon)
        self.needs_state = inner.needs_state
        self.description = f"{inner.description} eps={self.epsilon:g}"
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            self.noise_std = self.epsilon * (space.high - space.low) / 2.0

    def reset(self, rng):
        super().reset(rng)
        self.inner.reset(rng)

    def act(self, obs, state):
        action = self.inner.act(obs, state)
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            # Draw both numbers every step so the random stream does not depend on the branch.
            explore, random_action = self.uniform(), self.random_action()
            return random_action if explore < self.epsilon else action
        noisy = np.asarray(action, dtype=np.float64) + self.rng.normal(size=space.shape) * self.noise_std
        return np.clip(noisy, space.low, space.high).astype(space.dtype)


def _coerce_action(action, space: gym.Space, where: str):
    if hasattr(action, "detach"):
        action = action.detach().cpu().numpy()
    action = np.asarray(action)
    if isinstance(space, gym.spaces.Discrete):
        if action.size > 1:  # logits or probabilities
            return int(np.argmax(action.reshape(-1)))
        return int(action.reshape(()))
    action = action.reshape(space.shape).astype(space.dtype)
    return np.clip(action, space.low, space.high)


def _load_callable(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"policy {spec!r}: cannot import module {module_name!r} ({exc}); check PYTHONPATH") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"policy {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        obj = obj()
    if hasattr(obj, "act") and callable(obj.act):
        return obj.act
    if not callable(obj):
        raise UserError(f"policy {spec!r}: {attr!r} is not callable; it must map an observation to an action")
    return obj


def _torchscript(path: Path) -> Callable:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError with a long C++ trace
        raise UserError(f"policy {path}: not a TorchScript file ({str(exc).splitlines()[0]}); save it with torch.jit.save") from None
    module.eval()
    return _batch_of_one(module)


def _batch_of_one(module) -> Callable:
    """``obs -> module(obs as a (1, *O) float tensor)[0]``, without gradients, on wmil's thread
    count (``--threads``)."""
    import torch

    from wmil.threads import configure_threads

    configure_threads()

    def act(obs):
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0))[0]

    return act


def _exported(path: Path) -> Callable:
    import torch

    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:  # a zip that is not an exported program, a version mismatch, …
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"policy {path}: not a torch.export program ({first}); save one with "
                        "torch.export.save(torch.export.export(module, (example_obs,)), path)") from None
    return _batch_of_one(module)


def _sb3(path: Path) -> Callable:
    try:
        import stable_baselines3 as sb3
    except ImportError:
        raise UserError(f"policy {path}: a .zip policy needs stable-baselines3 (pip install stable-baselines3)") from None
    from wmil.threads import configure_threads

    configure_threads()
    last_error = None
    for cls_name in ("PPO", "SAC", "TD3", "A2C", "DQN", "DDPG"):
        try:
            model = getattr(sb3, cls_name).load(str(path), device="cpu")
            break
        except Exception as exc:  # wrong algorithm class for this file
            last_error = exc
    else:
        raise UserError(f"policy {path}: not a stable-baselines3 model ({last_error})")
    return lambda obs: model.predict(obs, deterministic=True)[0]


def make_policy(spec: str, action_space: gym.Space, env_id: str, epsilon: float = 0.0) -> Policy:
    """Build the policy named by ``spec`` for one environment copy."""
    if not 0.0 <= epsilon <= 1.0:
        raise UserError(f"--epsilon {epsilon}: must be between 0 and 1")
    if spec == "random":
        policy: Policy = RandomPolicy(action_space)
    elif spec == "expert":
        policy = ExpertPolicy(action_space, env_id)
    elif spec.endswith(".pt2"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"policy file {spec} not found")
        policy = CallablePolicy(action_space, _exported(path), f"export({path.name})")
    elif spec.endswith((".pt", ".pth", ".ts")):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"policy file {spec} not found")
        policy = CallablePolicy(action_space, _torchscript(path), f"torchscript({path.name})")
    elif spec.endswith(".zip"):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"policy file {spec} not found")
        policy = CallablePolicy(action_space, _sb3(path), f"sb3({path.name})")
    elif ":" in spec:
        policy = CallablePolicy(action_space, _load_callable(spec), spec)
    else:
        raise UserError(
            f"unknown policy {spec!r}: use 'random', 'expert', 'module:callable', a torch.export .pt2 file, "
            "a TorchScript .pt file or an SB3 .zip"
        )
    return EpsilonPolicy(policy, epsilon) if epsilon > 0 else policy
