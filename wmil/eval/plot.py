"""``wmil plot``: learning curves from the ``metrics.jsonl`` of one or more runs (PNG).

Every run keeps one colour in every panel and every panel has a legend of the runs drawn in it.
Real-environment scores (``wmil evaluate`` on a policy run: its ``evaluations.jsonl`` rows, or
the ``evaluation.json`` of older runs, and any ``real/...`` rows logged in ``metrics.jsonl``)
get a panel of their own, one marker per evaluated checkpoint, so the offline curves can be
read against the score that matters.
"""

from __future__ import annotations

import json
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
#: Real-environment panels, first present wins per group: the normalised score where the expert
#: data has reference scores, else the raw return; success where the env reports it.
REAL_METRICS = [("real/normalized_score", "real/return_mean"), ("real/success_rate",)]


def real_rows(run: str | os.PathLike) -> list[dict]:
    """Real-environment evaluation rows of a run: ``{"step": …, "real/<field>": …}``."""
    path = Path(run)
    rows = []
    history = path / "evaluations.jsonl"
    if history.is_file():
        rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        rows = [{k: v for k, v in row.items() if k == "step" or k.startswith("real/")} for row in rows]
    elif (path / "evaluation.json").is_file():  # runs evaluated before evaluations.jsonl existed
        report = json.loads((path / "evaluation.json").read_text())
        step = report.get("step")
        if step is None:
            found = RunDir(path, "policy").checkpoints()
            step = int(found[-1].stem.split("_")[1]) if found else None
        if step is not None:
            rows = [{"step": step, **{f"real/{k}": report[k] for k in ("return_mean", "normalized_score", "success_rate")
                                      if k in report}}]
    return rows


def _labels(runs: Sequence[str]) -> list[str]:
    """Each run's folder name, or its path as given where two folder names are the same."""
    names = [Path(r).name or str(r) for r in runs]
    return [name if names.count(name) == 1 else str(run) for name, run in zip(names, runs)]


def plot_runs(runs: Sequence[str | os.PathLike], metrics: Optional[Sequence[str]] = None,
              out: Optional[str | os.PathLike] = None) -> Path:
    """Draw ``metrics`` (default: the main ones of each run kind, plus real-environment scores)
    of every run into one PNG (default ``RUN/curves.png`` of the first run); returns its path.

    An unknown metric is a UserError before anything is drawn or written."""
    if not runs:
        raise UserError("give at least one run directory")
    runs = [str(r) for r in runs]
    records, kinds = {}, set()
    for run in runs:
        config = RunDir(run, "any").read_config()
        kinds.add(config["kind"])
        records[run] = RunDir(run, config["kind"]).read_metrics() + real_rows(run)
        if not records[run]:
            raise UserError(f"{run}: metrics.jsonl is empty; train first")
    logged = {k for rs in records.values() for r in rs for k in r if k != "step"}
    if metrics:
        unknown = [m for m in metrics if m not in logged]
        if unknown:
            raise UserError(f"--metric {', '.join(unknown)}: not logged by {'this run' if len(runs) == 1 else 'these runs'}; "
                            f"logged: {', '.join(sorted(k for k in logged if isinstance(k, str)))}")
        metrics = list(dict.fromkeys(metrics))
    else:
        wanted = [m for kind in sorted(kinds) for m in DEFAULT_METRICS.get(kind, [])]
        wanted += [next(m for m in group if m in logged) for group in REAL_METRICS if any(m in logged for m in group)]
        metrics = [m for m in dict.fromkeys(wanted) if m in logged]
    if not metrics:
        raise UserError("none of the default metrics were logged by these runs; pick some with --metric")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = dict(zip(runs, _labels(runs)))
    cols = min(3, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, (run, recs) in enumerate(records.items()):
            points = [(r["step"], r[metric]) for r in recs if metric in r]
            if not points:
                continue
            steps, values = zip(*sorted(points))
            style = dict(marker="o", linestyle="--") if metric.startswith("real/") else {}
            ax.plot(steps, values, color=colours[i % len(colours)], label=labels[run], **style)
        ax.set_title(metric + (" (real env)" if metric.startswith("real/") else ""))
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) if out else Path(runs[0]) / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return path
