"""The observation likelihood p(o | h, z) of the recurrent world models, as pure functions.

- 'gaussian' (the default): a unit-variance Gaussian around the decoder's output (DreamerV2 on
  images and vectors): −log p = ½‖ô − o‖² (+ a constant).
- 'bernoulli': one Bernoulli per pixel/cell with the decoder's output as logits, for images whose
  values are 0 or 1 (MinAtar's object channels, stored as 0/255): −log p = Σ BCE(ô, o).
  The prediction (``decode``) is the probability, mapped into ``preprocess_pixels`` space.

Why Gaussian on MinAtar too, though its cells are binary: measured on Breakout
(``python -m benchmarks.minatar likelihood``, ``benchmarks/results/minatar-likelihood-breakout.md``,
rssm small, 500 updates of 16×50), the Gaussian model imagined better at every horizon (1-step
cell error 1.5 % against 2.5 %, on-cell recall 77 % against 65 %; 15-step MSE 0.75 of repeating
the last frame against 0.97), while the Bernoulli model's categorical latents collapsed
(posterior entropy 0.08 nats against 14, KL 0.02): its posterior stopped carrying the
observation. With a 1 % uniform mix in the categoricals (``unimix=0.01``) the Bernoulli model
kept its latents (entropy 9.2) and closed most of the gap, still short of the Gaussian (1-step
cell error 1.6 %, 15-step MSE 0.91 of repeating). One seed each; the longer comparison is
``python -m benchmarks.minatar likelihood --steps 3000 --seeds 0 1 --variants gaussian
bernoulli-unimix``.

Where the Gaussian fails: on MinAtar Asterix (10,000 updates, `rssm` small, 16×50) the Gaussian
model never shows the player (a single cell: reconstructed at 0.04 where it is, recall 0 at
every step after a reset) nor, until 12,000 updates, the gold; on SpaceInvaders it never shows
the enemy bullets (0.05). A missed cell costs it ½ nat, little beside the frame. The Bernoulli
model collapsed there too (KL 0.06 by update 200, latents at the ``unimix`` floor, every frame
decoded as the base rates), while its logits were pushed from 0 toward the base rates; started
at the data's base rate instead (the trainer's ``set_pixel_rates`` on a fresh run: output bias
= log-odds of each channel's share of 'on' cells), the same model kept its latents (KL 18–24,
posterior entropy 33 at update 400; `benchmarks/results/quality-minatar-asterix.notes.md`).
On Breakout, started that way and trained 1,000 updates, the Bernoulli model no longer collapses
(posterior entropy 6.6) and imagines better than the Gaussian at 1 and 5 steps (open-loop MSE
0.59 / 0.50 of repeating the last frame against 0.70 / 0.59; 15 steps 0.45 against 0.47; one seed,
``minatar-likelihood-breakout.md``). The default stays Gaussian until a full-length comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wmil.errors import UserError
from wmil.types import DataSpec

Tensor = torch.Tensor

LIKELIHOODS = ("gaussian", "bernoulli")


def resolve_likelihood(choice: str, spec: DataSpec) -> str:
    """``choice`` checked against data described by ``spec`` (Bernoulli needs images)."""
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
