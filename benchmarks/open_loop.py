"""World-model quality: open-loop prediction error vs. "repeat the last observation" (issue 3).

For each task's world dataset (built from its recipe in datasets/) and each model, train with
the chosen preset, then observe 10 steps of held-out episodes and imagine 15 with the logged
actions: MSE at horizons 1, 5, 15 and its ratio to the naive baseline (lower is better; the
target is "well below 1" at h=15 on cartpole and lunar with the small preset).

    python -m benchmarks.open_loop [--tasks cartpole lunar] [--models rssm gaussian_rssm dynamics] [--steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import WORLD_RECIPES, ensure_dataset, table, write



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cartpole", "lunar"])
    parser.add_argument("--models", nargs="+", default=["rssm", "gaussian_rssm", "dynamics"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--out", default=None, help="keep run dirs here (default: a temp dir)")
    args = parser.parse_args()

    from wmil.config import parse_overrides
    from wmil.eval.world_model import evaluate_world_model
    from wmil.train.world_model import train_world_model

    overrides = parse_overrides(args.overrides)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.out or tmp)
        for task in args.tasks:
            dataset = ensure_dataset(WORLD_RECIPES[task])
            for model in args.models:
                started = time.perf_counter()
                out = runs / f"{task}-{model}"
                train_world_model(dataset, model=model, preset=args.preset, out=out, steps=args.steps,
                                  seed=args.seed, overrides=overrides, progress=False)
                minutes = (time.perf_counter() - started) / 60
                report = evaluate_world_model(out, batches=8)
                rows.append([task, model, args.steps, f"{minutes:.1f}"] +
                            [f"{report[f'open_loop/ratio_h{h}']:.3f}" for h in (1, 5, 15)] +
                            [f"{report['open_loop/mse_h15']:.4f}", f"{report['open_loop/naive_mse_h15']:.4f}"])
                print(rows[-1], flush=True)
    body = table(["task", "model", "updates", "train min", "ratio h1", "ratio h5", "ratio h15", "MSE h15",
                  "naive MSE h15"], rows)
    body += ("\n\nratio = open-loop MSE / MSE of repeating the last observed observation, on held-out episodes "
             f"(10 observed steps, then 15 imagined with the logged actions); preset `{args.preset}`; "
             "errors are in the model's normalised observation space.\n")
    write("open_loop.md", "World-model open-loop prediction", body)


if __name__ == "__main__":
    main()
