"""Resolve a gymnasium id, registering optional env families only when an id needs them.

``import wmil.envs`` imports neither ``ale_py`` nor ``gymnasium_robotics``: ALE ids
(``ALE/...``) import ``ale_py`` and robotics ids (``Fetch*``, ``HandManipulate*``, mazes, ...)
import ``gymnasium_robotics`` the first time such an id is made.
"""

from __future__ import annotations

import difflib
import importlib.util

from wmil.errors import UserError

# Name prefixes of the environments that gymnasium_robotics registers.
ROBOTICS_PREFIXES = (
    "Fetch",
    "Hand",
    "Adroit",
    "PointMaze",
    "AntMaze",
    "FrankaKitchen",
)

_registered: set[str] = set()


def is_ale_id(env_id: str) -> bool:
    """True for ids in the ``ALE/`` namespace (the ale-py v5 games)."""
    return env_id.startswith("ALE/")


def is_robotics_id(env_id: str) -> bool:
    """True for ids that gymnasium_robotics provides (by name prefix)."""
    return "/" not in env_id and env_id.startswith(ROBOTICS_PREFIXES)


def _register_ale() -> None:
    if "ale" in _registered:
        return
    import gymnasium as gym

    try:
        import ale_py
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError(
            f"environment id uses the Atari namespace but ale-py is not installed: "
            f"pip install 'wmil[atari]' ({e})"
        ) from None
    gym.register_envs(ale_py)
    _registered.add("ale")


def _register_robotics() -> None:
    if "robotics" in _registered:
        return
    import gymnasium as gym

    try:
        import gymnasium_robotics
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError(
            f"robotics environments need gymnasium-robotics: pip install 'wmil[robotics]' ({e})"
        ) from None
    gym.register_envs(gymnasium_robotics)
    _registered.add("robotics")


def ensure_registered(env_id: str) -> None:
    """Make sure ``env_id`` is in gymnasium's registry, or raise a one-line :class:`UserError`.

    Ids of the form ``module:Name-vN`` are left to gymnasium (it imports the module).
    """
    import gymnasium as gym

    if not isinstance(env_id, str) or not env_id.strip():
        raise UserError(f"env_id must be a non-empty gymnasium id string, got {env_id!r}")
    if ":" in env_id:
        return
    if env_id in gym.envs.registry:
        return
    if is_ale_id(env_id):
        _register_ale()
    elif env_id.startswith("MinAtar/"):
        from wmil.envs.minatar import register

        register()
    elif is_robotics_id(env_id):
        _register_robotics()
    else:
        # An unknown id may still live in an optional family that is installed (e.g. legacy
        # Atari ids such as "PongNoFrameskip-v4"); look there before giving up.
        for module, register in (("ale_py", _register_ale), ("gymnasium_robotics", _register_robotics)):
            if env_id in gym.envs.registry:
                break
            if importlib.util.find_spec(module) is not None:
                register()
    if env_id in gym.envs.registry:
        return

    hint = ""
    if is_ale_id(env_id) and importlib.util.find_spec("ale_py") is None:
        hint = "; Atari games need: pip install 'wmil[atari]'"
    elif is_robotics_id(env_id) and importlib.util.find_spec("gymnasium_robotics") is None:
        hint = "; robotics environments need: pip install 'wmil[robotics]'"
    close = difflib.get_close_matches(env_id, list(gym.envs.registry.keys()), n=3, cutoff=0.6)
    if not close:
        # Same name, other version ("LunarLander-v2" -> "LunarLander-v3").
        base = env_id.rsplit("-v", 1)[0].lower()
        close = [k for k in gym.envs.registry if k.rsplit("-v", 1)[0].lower() == base][:3]
    suggestion = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"unknown environment id {env_id!r}{suggestion}{hint} "
        f"(any id in gymnasium's registry works; see gymnasium.pprint_registry())"
    )
