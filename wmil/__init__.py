"""wmil: offline imitation learning inside learned world models.

The library API (imported lazily, so ``import wmil`` and the CLI start fast; ``dir(wmil)`` and
tab completion list it):

    wmil.data.load(name_or_path)                       a dataset view with samplers
    wmil.build_dataset(BuildConfig(...))               record a policy into a Minari dataset
    wmil.train_world_model(dataset, model="rssm", preset="small", out=...)
    wmil.load_world_model(run_dir)
    wmil.evaluate_world_model(run_dir)                 open-loop errors on held-out episodes
    wmil.train_policy("ditto", model_run, expert, out=...)
    wmil.load_policy(run_dir)                          deployable: reset(), act(obs), act_batch, predict
    wmil.export_policy(policy, "policy.pt2")           a torch.export program that runs without wmil
    wmil.evaluate_policy(policy_or_run, env=... | env_id=..., n_envs=...)   real-environment scores
    wmil.set_threads(n)                                torch CPU threads (default 1; see wmil.threads)
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

_LAZY = {
    "build_dataset": "wmil.data.build",
    "BuildConfig": "wmil.data.build",
    "train_world_model": "wmil.train.world_model",
    "load_world_model": "wmil.train.world_model",
    "evaluate_world_model": "wmil.eval.world_model",
    "train_policy": "wmil.train.policy",
    "load_policy": "wmil.train.policy",
    "evaluate_policy": "wmil.eval.evaluate",
    "export_policy": "wmil.export",
    "set_threads": "wmil.threads",
}
#: Subpackages, importable as attributes once imported (``wmil.data.load`` after ``import wmil.data``).
_SUBPACKAGES = ("data", "envs", "eval", "train", "algos", "world_models", "imagination", "nets")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_import_module(_LAZY[name]), name)
    if name in _SUBPACKAGES:
        return _import_module(f"wmil.{name}")
    raise AttributeError(f"module 'wmil' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names plus the lazy API, for ``dir(wmil)`` and tab completion."""
    return sorted(set(globals()) | set(_LAZY) | set(_SUBPACKAGES))
