"""The observation likelihood p(o | h, z) of the recurrent world models, as pure functions.

- 'gaussian': a unit-variance Gaussian around the decoder's output (DreamerV2 on images and
  vectors): −log p = ½‖ô − o‖² (+ a constant).
- 'bernoulli': one Bernoulli per pixel/cell with the decoder's output as logits, for images whose
  values are 0 or 1 (MinAtar's object channels, stored as 0/255): −log p = Σ BCE(ô, o).
  The prediction (``decode``) is the probability, mapped into ``preprocess_pixels`` space.

'auto' picks Bernoulli for small grid images (:func:`wmil.nets.grid.is_grid`) and Gaussian
otherwise. Measured on MinAtar Breakout (``python -m benchmarks.minatar likelihood``,
``benchmarks/results/minatar-likelihood.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmil.errors import UserError
from wmil.nets.grid import is_grid
from wmil.types import DataSpec

Tensor = torch.Tensor

LIKELIHOODS = ("auto", "gaussian", "bernoulli")


def resolve_likelihood(choice: str, spec: DataSpec) -> str:
    """'gaussian' or 'bernoulli' for data described by ``spec`` ('auto': Bernoulli on grids)."""
    if choice == "auto":
        return "bernoulli" if spec.pixels and is_grid(spec.obs_shape) else "gaussian"
    if choice == "bernoulli" and not spec.pixels:
        raise UserError("obs_likelihood='bernoulli' needs image observations (values 0 or 255); "
                        "use 'gaussian' for vector observations")
    if choice not in ("gaussian", "bernoulli"):
        raise UserError(f"obs_likelihood={choice!r}: choose one of {list(LIKELIHOODS)}")
    return choice


def observation_nll(raw: Tensor, target: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(−log p(target | raw) per element, the prediction in ``target``'s space), same shapes as
    ``raw``. ``target`` is in ``preprocess_obs`` space: for 'bernoulli', images in [-0.5, 0.5]
    whose probability of "on" is ``target + 0.5``."""
    if kind == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(raw, target + 0.5, reduction="none")
        return nll, torch.sigmoid(raw) - 0.5
    return 0.5 * (raw - target).pow(2), raw


def predict(raw: Tensor, kind: str) -> Tensor:
    """The decoder output ``raw`` as a prediction in ``preprocess_obs`` space."""
    return torch.sigmoid(raw) - 0.5 if kind == "bernoulli" else raw


__all__ = ["LIKELIHOODS", "observation_nll", "predict", "resolve_likelihood"]
