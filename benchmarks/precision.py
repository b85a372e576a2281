"""World-model quality and speed in fp32 against bf16 autocast (issue 17).

For each task's world dataset (built from its recipe in datasets/), each seed and each
precision, train the same world model on the same data with the same seed and number of
updates; then measure the open-loop prediction error of held-out episodes (10 observed steps,
15 imagined with the logged actions) as a ratio to repeating the last observation, at
horizons 1, 5 and 15, with ``wmil evaluate-model``'s code in fp32 (the trained parameters are
float32 either way; the table also gives the last in-training validation ratio, computed in
the run's own precision), and the training throughput (median frames/s of the run's logs).

bf16 counts as *equal in quality* on a task when, at every horizon, the seed-mean ratio of bf16
differs from that of fp32 by at most the tolerance: ``--tolerance`` (relative, default 15 %)
of the fp32 mean, or the spread between fp32 seeds, whichever is larger (two fp32 runs that
differ only in the seed are the scale of a difference that means nothing).

    python -m benchmarks.precision [--tasks cartpole lunar] [--seeds 0 1] [--steps 1500]

Writes ``benchmarks/results/precision.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import WORLD_RECIPES, ensure_dataset, stamp, table, write

HORIZONS = (1, 5, 15)
PRECISIONS = ("fp32", "bf16")
DEFAULT_OVERRIDES = ["batch_size=16", "seq_len=50", "eval_every=500", "checkpoint_every=1500"]


def verdict(fp32: dict, bf16: dict, tolerance: float) -> tuple[bool, list[str]]:
    """``fp32``/``bf16``: horizon -> ratios over seeds. Equal when every horizon's seed-mean
    differs by at most max(tolerance × fp32 mean, fp32 seed spread); the reasons per horizon."""
    equal, notes = True, []
    for h in HORIZONS:
        a, b = statistics.mean(fp32[h]), statistics.mean(bf16[h])
        allowed = max(tolerance * a, max(fp32[h]) - min(fp32[h]))
        ok = abs(b - a) <= allowed
        equal &= ok
        notes.append(f"h{h}: {b:.3f} vs {a:.3f} (|Δ| {abs(b - a):.3f} {'≤' if ok else '>'} {allowed:.3f})")
    return equal, notes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cartpole", "lunar"])
    parser.add_argument("--model", default="rssm")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training run")
    parser.add_argument("--tolerance", type=float, default=0.15, help="relative tolerance of the ratios")
    parser.add_argument("-o", dest="overrides", action="append", default=None,
                        help="key=value overrides (default: " + " ".join(f"-o {o}" for o in DEFAULT_OVERRIDES)
                             + ", as benchmarks/open_loop.py was run)")
    parser.add_argument("--out", default=None, help="keep run dirs here (default: a temp dir)")
    args = parser.parse_args()
    args.overrides = DEFAULT_OVERRIDES if args.overrides is None else args.overrides
    os.environ["WMIL_NUM_THREADS"] = str(args.threads)  # read by resolve_device

    import torch

    from wmil.config import parse_overrides
    from wmil.eval.world_model import evaluate_world_model
    from wmil.runs import RunDir
    from wmil.train.world_model import train_world_model

    torch.set_num_threads(args.threads)
    stamped = stamp()  # the code measured is the code at the start
    overrides = parse_overrides(args.overrides)
    rows, verdicts, loads = [], [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.out or tmp)
        for task in args.tasks:
            dataset = ensure_dataset(WORLD_RECIPES[task])
            ratios = {p: {h: [] for h in HORIZONS} for p in PRECISIONS}
            speed = {p: [] for p in PRECISIONS}
            for seed in args.seeds:
                for precision in PRECISIONS:  # side by side, so load changes hit both alike
                    out = runs / f"{task}-{args.model}-{precision}-s{seed}"
                    started = time.perf_counter()
                    train_world_model(dataset, model=args.model, preset=args.preset, out=out, steps=args.steps,
                                      seed=seed, device="cpu", overrides=overrides, progress=False,
                                      precision=precision)
                    minutes = (time.perf_counter() - started) / 60
                    loads.append(os.getloadavg()[0])
                    metrics = RunDir(out, "world_model").read_metrics()
                    fps = statistics.median(m["perf/frames_per_s"] for m in metrics if "perf/frames_per_s" in m)
                    val = [m for m in metrics if "open_loop/ratio_h15" in m][-1]
                    report = evaluate_world_model(out, batches=8)
                    for h in HORIZONS:
                        ratios[precision][h].append(report[f"open_loop/ratio_h{h}"])
                    speed[precision].append(fps)
                    rows.append([task, seed, precision, f"{minutes:.1f}", f"{fps:,.0f}"]
                                + [f"{report[f'open_loop/ratio_h{h}']:.3f}" for h in HORIZONS]
                                + [f"{val['open_loop/ratio_h15']:.3f}", f"{report['open_loop/mse_h15']:.4f}"])
                    print(rows[-1], flush=True)
            equal, notes = verdict(ratios["fp32"], ratios["bf16"], args.tolerance)
            speedup = statistics.median(speed["bf16"]) / statistics.median(speed["fp32"])
            verdicts.append(f"- **{task}**: bf16 {'equal in quality' if equal else 'NOT equal in quality'} "
                            f"(seed means, evaluated in fp32: {'; '.join(notes)}); training throughput "
                            f"bf16 ÷ fp32 = **{speedup:.2f}×** (median frames/s of the runs)")
    body = table(["task", "seed", "precision", "train min", "frames/s", "ratio h1", "ratio h5", "ratio h15",
                  "val ratio h15 (own precision)", "MSE h15"], rows)
    body += ("\n\nratio = open-loop MSE / MSE of repeating the last observed observation on held-out episodes "
             f"(8 batches of 32 windows: 10 observed steps, then 15 imagined with the logged actions), computed "
             f"in fp32 from the trained float32 parameters; 'val ratio h15' is the run's last validation figure, "
             f"computed in its own precision on its fixed validation windows. Model `{args.model}`, preset "
             f"`{args.preset}`, {args.steps} updates, overrides {args.overrides}, {args.threads} torch thread(s) "
             f"per run, fp32 and bf16 runs of a seed back to back. 1-min load average: "
             f"{', '.join(f'{x:.2f}' for x in loads)} (start, then after each run).\n\n"
             f"Tolerance: per horizon, |mean bf16 − mean fp32| ≤ max({args.tolerance:.0%} of the fp32 mean, "
             "the spread between fp32 seeds).\n\n" + "\n".join(verdicts) + "\n")
    write("precision.md", "World-model quality and speed: fp32 vs bf16 autocast", body, stamped)


if __name__ == "__main__":
    main()
