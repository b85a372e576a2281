"""Getting trajectories in: recording, Minari/HDF5 storage, import/export, samplers.

The public entry points are :func:`load` (open a dataset by name or path),
:func:`wmil.data.build.build_dataset` and the functions of :mod:`wmil.data.transfer`.
"""

from wmil.data.dataset import Dataset, load

__all__ = ["Dataset", "load"]
