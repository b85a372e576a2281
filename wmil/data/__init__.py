"""Getting trajectories in: recording, Minari/HDF5 storage, import/export, samplers.

The public entry points are :func:`load` (open a dataset by name or path),
:func:`wmil.data.build.build_dataset` and the functions of :mod:`wmil.data.transfer`.
``Dataset`` and ``load`` are imported on first use, so light modules of this package (dataset
names, the shipped recipes) load without torch and the CLI answers fast.
"""

from importlib import import_module as _import_module

__all__ = ["Dataset", "load"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(_import_module("wmil.data.dataset"), name)
    raise AttributeError(f"module 'wmil.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
