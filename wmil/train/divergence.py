"""Divergence guard: stop (or warn about) a run whose numbers have left the rails.

Three signs, checked on every update's metrics and every evaluation:

* a loss term that is NaN or inf (always stops: nothing can be learned after it);
* any other metric that is NaN or inf — gradient norms (``*/grad_norm``: an overflowing norm
  means the clipped step was zero or NaN) and evaluation figures;
* a loss term far above its running level. The rule works on ``s = sign(x)·log(1 + |x|)``, so
  it is scale free for large losses and linear near zero, and negative losses (actor terms,
  Gaussian likelihoods) are handled alike. Per term it keeps an exponential moving average
  ``m`` of ``s`` and of its absolute deviation ``d`` (decay :data:`DECAY`, time constant ~50
  updates); after :data:`WARMUP` updates of that term, a value with
  ``s − m > max(K·d, MIN_JUMP)`` is a divergence. With ``MIN_JUMP = 5`` a loss must grow
  about 150-fold in one update (a loss near 0 must jump by ~150); ``K = 10`` running
  deviations keeps noisy terms (small batches, adversarial losses) from tripping it.
  Slow drifts are followed by the average; where they end in an overflow, the first two
  signs catch it.

``on_divergence='warn'`` reports the last two signs once per metric and keeps training; the
guard's running averages are saved in every checkpoint, so a resumed run judges as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from wmil.errors import UserError, warn

DECAY = 0.98
WARMUP = 50
K = 10.0
MIN_JUMP = 5.0
CHOICES = ("stop", "warn")


def _squash(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


class DivergenceGuard:
    """Checks metrics as they are produced; raises a one-line UserError naming the term, the
    step and the last good checkpoint (``last_checkpoint()`` gives its name)."""

    def __init__(self, on_divergence: str = "stop", last_checkpoint=lambda: None):
        if on_divergence not in CHOICES:
            raise UserError(f"on_divergence={on_divergence!r}: choose one of {', '.join(CHOICES)}")
        self.mode = on_divergence
        self.last_checkpoint = last_checkpoint
        self.stats: dict[str, list[float]] = {}   # term -> [updates seen, mean of s, mean |s - mean|]
        self.warned: set[str] = set()

    def check(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, raw in metrics.items():
            value = float(raw)
            is_loss = name.startswith("loss/")
            if not math.isfinite(value):
                self._diverged(step, name, f"'{name}' is {value}", always_stop=is_loss)
                continue
            if is_loss:
                self._track(step, name, value)

    def _track(self, step: int, name: str, value: float) -> None:
        s = _squash(value)
        seen, mean, dev = self.stats.get(name, (0, s, 0.0))
        if seen >= WARMUP and s - mean > max(K * dev, MIN_JUMP):
            self._diverged(step, name, f"loss term '{name}' jumped to {value:.4g}, far above its running level "
                                       f"{math.copysign(math.expm1(abs(mean)), mean):.4g}")
            if self.mode == "warn":
                return  # a warned outlier does not drag the running level up
        dev = DECAY * dev + (1 - DECAY) * abs(s - mean) if seen else 0.0
        mean = DECAY * mean + (1 - DECAY) * s if seen else s
        self.stats[name] = [seen + 1, mean, dev]

    def _diverged(self, step: int, name: str, what: str, always_stop: bool = False) -> None:
        last = self.last_checkpoint()
        where = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was written"
        if always_stop or self.mode == "stop":
            hint = "" if always_stop else ", or pass -o on_divergence=warn to only warn"
            raise UserError(f"step {step}: {what}; training stopped ({where}); lower the learning rate or check "
                            f"the data for outliers{hint}")
        if name not in self.warned:
            self.warned.add(name)
            warn(f"step {step}: {what}; training goes on (on_divergence=warn; {where})")

    def state(self) -> dict:
        """Plain values for the checkpoint."""
        return {"stats": {k: list(v) for k, v in self.stats.items()}, "warned": sorted(self.warned)}

    def load_state(self, state: Optional[dict]) -> None:
        if state:
            self.stats = {k: [int(v[0]), float(v[1]), float(v[2])] for k, v in state["stats"].items()}
            self.warned = set(state.get("warned", ()))
