"""``wmil plot``: learning curves from the ``metrics.jsonl`` of one or more runs (PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from wmil.errors import UserError
from wmil.runs import RunDir

#: Curves drawn by default, per kind of run, when present.
DEFAULT_METRICS = {
    "world_model": ["loss/total", "loss/obs", "loss/kl", "open_loop/ratio_h15"],
    "policy": ["eval/latent_distance", "eval/action_accuracy", "eval/action_mse", "reward/latent_distance",
               "actor/entropy", "loss/critic"],
}


def plot_runs(runs: Sequence[str | os.PathLike], metrics: Optional[Sequence[str]] = None,
              out: Optional[str | os.PathLike] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise UserError("give at least one run directory")
    records, kinds = {}, set()
    for run in runs:
        config = RunDir(run, "any").read_config()
        kinds.add(config["kind"])
        records[str(run)] = RunDir(run, config["kind"]).read_metrics()
        if not records[str(run)]:
            raise UserError(f"{run}: metrics.jsonl is empty; train first")
    if metrics is None:
        wanted = [m for kind in sorted(kinds) for m in DEFAULT_METRICS.get(kind, [])]
        metrics = [m for m in wanted if any(m in r for rs in records.values() for r in rs)]
    if not metrics:
        raise UserError("none of the requested metrics were logged by these runs")
    cols = min(3, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for run, recs in records.items():
            points = [(r["step"], r[metric]) for r in recs if metric in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=Path(run).name)
        ax.set_title(metric)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) if out else Path(runs[0]) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
