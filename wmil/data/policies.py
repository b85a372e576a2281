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
                             float tensor to logits/action — the successor of TorchScript; loaded
                             without unpickling anything (files that would need it are refused)
  ``path/to/policy.pt``      a TorchScript module, same signature (deprecated by torch 2.13 but read)
  ``path/to/model.zip``      a stable-baselines3 model (needs ``stable-baselines3`` installed)

TorchScript files, SB3 zips and ``module:callable`` policies are programs by design: loading
one runs code from it (TorchScript code, SB3's pickled objects, an imported module). Use them
only from sources you trust; a ``.pt2`` is the format to accept from others.
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
    """A ``torch.export`` program, loaded so that nothing in the file is unpickled.

    ``torch.export.load`` unpickles some entries (tensor subclasses, opaque and custom
    constants, legacy weight files) and, when a safe read of the sample inputs fails, falls
    back to a full unpickle; AOTInductor entries are native code. So the archive is read into
    memory once, checked by :func:`_pt2_refusal` (only the entries a plain exported program has,
    no entry marked for pickling, sample inputs that load with ``weights_only=True``), and
    loaded from those same bytes with every ``torch.load`` inside forced to ``weights_only``.
    """
    import io

    import torch

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"policy {path}: cannot read it ({exc.strerror})") from None
    refusal = _pt2_refusal(data)
    if refusal and refusal.startswith("not a"):
        raise UserError(f"policy {path}: {refusal}; save one with "
                        "torch.export.save(torch.export.export(module, (example_obs,)), path)")
    if refusal:
        raise UserError(f"policy {path}: {refusal}; refused, since loading it would need unpickling, which can "
                        "run code (re-export it with torch.export.save from plain tensors)")
    try:
        with _weights_only_loads():
            module = torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:  # a version mismatch, a damaged graph, a refused unpickle, …
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"policy {path}: not a loadable torch.export program ({first[:200]}); save one with "
                        "torch.export.save(torch.export.export(module, (example_obs,)), path)") from None
    return _batch_of_one(module)


#: Entries of a torch.export archive (below its root folder) that hold no pickles: the format
#: markers, the graph (JSON), tensor payloads described by JSON configs, text extras.
_PT2_PLAIN = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")


def _pt2_refusal(data: bytes) -> Optional[str]:
    """Why the archive ``data`` cannot be loaded without unpickling, or None when it can."""
    import io
    import json
    import zipfile

    import torch

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return "not a torch.export program (not a zip archive)"
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        return "not a torch.export program (entries outside one root folder)"
    root = roots.pop() + "/"
    entries = {name[len(root):]: name for name in names}
    if "archive_version" not in entries or "archive_format" not in entries:
        return "not a torch.export program of the current format (no archive_version; an old-format file)"
    try:
        for entry, name in entries.items():
            if entry in _PT2_PLAIN or entry.startswith("extra/") or (entry.startswith("models/") and entry.endswith(".json")):
                continue
            if entry.startswith(("data/weights/", "data/constants/")) and not entry.endswith(".pt"):
                if entry.endswith("_config.json"):
                    config = json.loads(archive.read(name)).get("config", {})
                    for fqn, meta in config.items():
                        if not isinstance(meta, dict) or meta.get("use_pickle"):
                            return f"entry {entry} stores {fqn!r} as a pickle"
                        if not str(meta.get("path_name", "")).startswith(("tensor_", "weight_")):
                            return f"entry {entry} stores {fqn!r} as a Python object ({meta.get('path_name')})"
                continue
            if entry.startswith("data/sample_inputs/") and entry.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    return f"entry {entry} (sample inputs) holds Python objects besides tensors"
                continue
            return f"unexpected entry {entry} (pickled, compiled or unknown content)"
    except (zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError) as exc:
        return f"damaged archive ({type(exc).__name__})"
    return None


class _weights_only_loads:
    """Force every ``torch.load`` inside to ``weights_only=True`` (torch's own switch), even
    where torch itself asks for ``weights_only=False``."""

    KEY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    #: torch logs failed loads with a traceback; the UserError says it in one line instead.
    LOGGERS = ("torch.export", "torch._export")

    def __enter__(self):
        import logging
        import os

        self.saved = os.environ.get(self.KEY)
        os.environ[self.KEY] = "1"
        self.levels = {name: logging.getLogger(name).level for name in self.LOGGERS}
        for name in self.LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        import logging
        import os

        if self.saved is None:
            os.environ.pop(self.KEY, None)
        else:
            os.environ[self.KEY] = self.saved
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


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
