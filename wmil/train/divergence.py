"""Divergence guard: stop (or warn about) a run whose numbers have left the rails.

Three signs, checked on every update's metrics and every evaluation:

* a loss term that is NaN or inf (always stops: nothing can be learned after it);
* any other metric that is NaN or inf — gradient norms (``*/grad_norm``: an overflowing norm
  means the clipped step was zero or NaN) and evaluation figures;
* a loss term far above its running level. The rule works on ``s = sign(x)·log(1 + |x|)``, so
  it is scale free for large losses and linear near zero, and negative losses (actor terms,
  Gaussian likelihoods) are handled alike. Per term it keeps an exponential moving average
  ``m`` of ``s`` and of its absolute deviation ``d`` (decay :data:`DECAY`: a time constant of
  ~10 updates, so steady trends are followed), and a value with ``s − m > max(K·d, MIN_JUMP)``
  is a divergence. ``MIN_JUMP = 5`` means a loss must grow about 150-fold above its recent
  level in one update (a loss near 0 must jump by ~150); ``K = 10`` running deviations keeps
  noisy terms (small batches, adversarial losses) from tripping it. It is active from the
  second update on: the explosions of absurd learning rates happen at once (an RSSM at
  lr 1e4 went from 1.5 to 2e19 in its second update and then trained on at 1e9 with exit 0).
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

DECAY = 0.9
K = 10.0
MIN_JUMP = 5.0
CHOICES = ("stop", "warn")


def _squash(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def check_mode(on_divergence: str) -> str:
    if on_divergence not in CHOICES:
        raise UserError(f"on_divergence={on_divergence!r}: choose one of {', '.join(CHOICES)}")
    return on_divergence


class DivergenceGuard:
    """Checks metrics as they are produced; raises a one-line UserError naming the term, the
    step and the last good checkpoint (``last_checkpoint()`` gives its name)."""

    def __init__(self, on_divergence: str = "stop", last_checkpoint=lambda: None):
        self.mode = check_mode(on_divergence)
        self.last_checkpoint = last_checkpoint
        self.stats: dict[str, list[float]] = {}   # term -> [updates seen, mean of s, mean |s - mean|]
        self.warned: set[str] = set()

    def check(self, step: int, metrics: Mapping[str, float]) -> None:
        """Raise (or warn, once per metric, in one line per step) when ``metrics`` diverged."""
        problems: list[tuple[str, str, bool]] = []   # (metric, description, always stops)
        for name, raw in metrics.items():
            value = float(raw)
            is_loss = name.startswith("loss/")
            if not math.isfinite(value):
                problems.append((name, f"'{name}' is {value}", is_loss))
            elif is_loss:
                jump = self._track(name, value)
                if jump:
                    problems.append((name, jump, False))
        if problems:
            self._diverged(step, problems)

    def failed(self, step: int, reason: str) -> None:
        """An update that raised on non-finite numbers (always stops)."""
        self._diverged(step, [("update", f"the update failed on non-finite values ({reason})", True)])

    def _track(self, name: str, value: float) -> Optional[str]:
        """Update the running level of a loss term; describe the value if it jumped far above it."""
        s = _squash(value)
        seen, mean, dev = self.stats.get(name, (0, s, 0.0))
        if seen and s - mean > max(K * dev, MIN_JUMP):
            level = math.copysign(math.expm1(abs(mean)), mean)
            # A flagged value does not drag the running level up (in 'warn' mode training goes on).
            return f"loss term '{name}' jumped to {value:.4g}, far above its running level {level:.4g}"
        dev = DECAY * dev + (1 - DECAY) * abs(s - mean) if seen else 0.0
        mean = DECAY * mean + (1 - DECAY) * s if seen else s
        self.stats[name] = [seen + 1, mean, dev]
        return None

    def _diverged(self, step: int, problems: list[tuple[str, str, bool]]) -> None:
        last = self.last_checkpoint()
        where = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was written"
        always = [p for p in problems if p[2]]
        if always or self.mode == "stop":
            shown = always or problems
            what = "; ".join(p[1] for p in shown[:3]) + (f" (and {len(shown) - 3} more)" if len(shown) > 3 else "")
            hint = "" if always else ", or pass -o on_divergence=warn to only warn"
            raise UserError(f"step {step}: {what}; training stopped ({where}); lower the learning rate or check "
                            f"the data for outliers{hint}")
        new = [p for p in problems if p[0] not in self.warned]
        if new:
            self.warned.update(p[0] for p in new)
            what = "; ".join(p[1] for p in new[:3]) + (f" (and {len(new) - 3} more)" if len(new) > 3 else "")
            warn(f"step {step}: {what}; training goes on (on_divergence=warn; {where})")

    def state(self) -> dict:
        """Plain values for the checkpoint."""
        return {"stats": {k: list(v) for k, v in self.stats.items()}, "warned": sorted(self.warned)}

    def load_state(self, state: Optional[dict]) -> None:
        if state:
            self.stats = {k: [int(v[0]), float(v[1]), float(v[2])] for k, v in state["stats"].items()}
            self.warned = set(state.get("warned", ()))
