"""The training loop every trainer shares: progress bar, logging, evaluation, checkpoints.

A trainer supplies ``update(step) -> metrics`` (one optimiser step), ``evaluate(step) ->
metrics`` and ``checkpoint() -> payload``; the loop owns cadence, the frames/s figure, the
divergence guard (``wmil.train.divergence``: a non-finite loss, a non-finite gradient norm or
metric, or a loss far above its running level stops training before anything is saved) and
the final save.
"""

from __future__ import annotations

import math
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

from wmil.config import LoopConfig
from wmil.errors import UserError
from wmil.progress import progress_bar
from wmil.runs import RunDir
from wmil.threads import RateWatch
from wmil.train.divergence import DivergenceGuard


#: Messages of torch errors caused by non-finite numbers (distributions, multinomial, …).
_NON_FINITE = re.compile(r"\b(nan|inf)\b|invalid values", re.IGNORECASE)


def _last_checkpoint(run: RunDir) -> Optional[str]:
    found = run.checkpoints()
    return found[-1].name if found else None


def check_finite(step: int, losses: dict, run: RunDir) -> None:
    """Stop on a NaN/inf loss term before the optimiser applies it."""
    for name, value in losses.items():
        v = float(value.detach()) if hasattr(value, "detach") else float(value)
        if not math.isfinite(v):
            last = _last_checkpoint(run)
            where = f"the last checkpoint ({last}) is intact" if last else "no checkpoint was written"
            raise UserError(f"step {step}: loss term '{name}' is {v}; training stopped ({where}); "
                            "lower the learning rate or check the data for outliers")


def run_loop(run: RunDir, config: LoopConfig, start_step: int,
             update: Callable[[int], dict], evaluate: Optional[Callable[[int], dict]],
             checkpoint: Callable[[], dict], progress: bool = True, desc: str = "training",
             postfix_keys: tuple[str, ...] = (), frames_per_update: int = 0,
             callbacks: Sequence[Callable[[int, dict], Any]] = ()) -> dict:
    """Run updates ``start_step+1 … steps`` at the cadence of ``config``; returns the last logged
    metrics. ``frames_per_update`` (B×T) adds a frames/s figure (0: updates/s only). Each of
    ``callbacks`` is called as ``callback(step, metrics)`` with every logged row (evaluation
    included); one that returns True stops training after a checkpoint at that step. The run is
    closed (TensorBoard flushed, lock released) however the loop ends."""
    guard = DivergenceGuard(config.on_divergence, lambda: _last_checkpoint(run))
    if run.resumed is not None:
        guard.load_state(run.resumed.get("divergence"))
    bar = progress_bar(config.steps, desc, progress and start_step < config.steps, unit="upd", initial=start_step)
    last: dict = {}
    stop = False
    watch = RateWatch()  # warns once if updates/s collapses (e.g. OpenMP threads on a busy CPU)
    window_started, window_updates = time.perf_counter(), 0
    try:
        for step in range(start_step + 1, config.steps + 1):
            try:
                metrics = update(step)
            except (RuntimeError, ValueError) as exc:
                if not _NON_FINITE.search(str(exc)):
                    raise
                # Parameters driven to inf/NaN by the previous step break sampling (torch checks
                # distribution parameters) before this step's metrics exist: the same divergence.
                guard.failed(step, (str(exc).splitlines() or [""])[0][:160])
            guard.check(step, metrics)
            window_updates += 1
            if step % config.log_every == 0 or step == config.steps:
                elapsed = max(time.perf_counter() - window_started, 1e-9)
                rate = window_updates / elapsed
                warning = watch.observe(window_updates, elapsed, _torch_threads())
                if warning:
                    bar.write(warning, file=sys.stderr)
                metrics = dict(metrics, **{"perf/updates_per_s": rate})
                if frames_per_update:
                    metrics["perf/frames_per_s"] = rate * frames_per_update
                if evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
                    evaluation = evaluate(step)
                    guard.check(step, evaluation)
                    metrics.update(evaluation)
                run.log(step, metrics)
                last = metrics
                stop = any([bool(callback(step, dict(metrics))) for callback in callbacks])
                window_started, window_updates = time.perf_counter(), 0
                shown = {k.split("/")[-1]: f"{metrics[k]:.3g}" for k in postfix_keys if k in metrics}
                if frames_per_update:
                    shown["fps"] = f"{metrics['perf/frames_per_s']:.0f}"
                else:
                    shown["upd/s"] = f"{rate:.1f}"
                bar.set_postfix(shown, refresh=False)
            if step % config.checkpoint_every == 0 or step == config.steps or stop:
                run.save_checkpoint(step, {**checkpoint(), "divergence": guard.state()})
            bar.update(1)
            if stop:
                bar.write(f"stopped at step {step} by a callback (checkpoint written; re-run to continue)",
                          file=sys.stderr)
                break
    finally:
        bar.close()
        run.close()
    return last


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
