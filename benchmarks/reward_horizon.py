"""The reward check of a world model at several imagination horizons, by phase of the episode.

The reward check (``wmil.eval.reward_check``) asks whether DITTO's return from an expert state is
highest for the expert's own first action (the expert's logged actions after it, common random
numbers). Its figure depends on the horizon H over which the return is summed: the further the
prior imagines open loop, the more its own error competes with the action's effect. This script
reports the check at each H, overall and by how far into its episode the start state is (for
LunarLander: the first steps, the descent, the approach and the touchdown), so that the learner's
horizon can be chosen on the demonstrations and the model alone, never on evaluation episodes.

    python -m benchmarks.reward_horizon --task lunar --model runs/quality/lunar/wm-rssm-s0 \
        --horizons 3 5 8 10 15 25
"""

from __future__ import annotations

import argparse
import os
from itertools import pairwise

import numpy as np
import torch

from benchmarks.common import ensure_dataset, table, write

#: The expert dataset recipe of each task (built locally when absent, as the quality benchmark does).
EXPERTS = {"cartpole": "cartpole-expert.yaml", "lunar": "lunar-expert.yaml", "pendulum": "pendulum-expert.yaml"}
#: Edges (steps since the episode's first observation) of the phases reported.
PHASES = (0, 25, 75, 150, 250)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(EXPERTS))
    parser.add_argument("--model", required=True, nargs="+", help="world-model run dirs")
    parser.add_argument("--horizons", type=int, nargs="+", default=[3, 5, 8, 10, 15, 25])
    parser.add_argument("--starts", type=int, default=1024, help="expert start states per horizon")
    parser.add_argument("--features", default="deter", choices=["sample", "mean", "deter"])
    parser.add_argument("--gamma", type=float, default=0.95, help="discount of the checked return (DITTO's)")
    parser.add_argument("--phases", type=int, nargs="+", default=list(PHASES), help="phase edges in steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results file name (default reward_horizon-<task>.md)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("WMIL_NUM_THREADS", "1")))

    from wmil.data import load
    from wmil.eval.reward_check import candidate_returns, expert_and_best_other
    from wmil.imagination.expert import ExpertLatents
    from wmil.train.world_model import load_world_model

    expert = load(ensure_dataset(EXPERTS[args.task]))
    edges = list(args.phases) + [np.inf]
    phase_names = [f"{int(lo)}–{int(hi) - 1}" if np.isfinite(hi) else f"≥ {int(lo)}" for lo, hi in pairwise(edges)]
    rows = []
    for run in args.model:
        model = load_world_model(run)
        model.eval()
        torch.manual_seed(args.seed)  # the posterior samples of the expert's latents
        latents = ExpertLatents.encode(model, expert, torch.device("cpu"))
        for horizon in args.horizons:
            starts, returns, expert_index = candidate_returns(model, latents, args.features, horizon, args.gamma,
                                                              args.starts, seed=args.seed)
            expert_return, best_other = expert_and_best_other(returns, expert_index)
            wins = (expert_return > best_other).numpy()
            episode = np.searchsorted(latents.offsets, starts, side="right") - 1
            step = starts - latents.offsets[episode]
            cells = []
            for lo, hi in pairwise(edges):
                inside = (step >= lo) & (step < hi)
                cells.append(f"{wins[inside].mean():.2f} ({inside.sum()})" if inside.any() else "–")
            rows.append([os.path.basename(os.path.normpath(run)), horizon, len(starts), f"{wins.mean():.3f}",
                         f"{1 / returns.shape[0]:.2f}"] + cells)
            print(rows[-1], flush=True)
    body = table(["world model", "H", "starts", "accuracy", "chance"] + [f"steps {p}" for p in phase_names], rows)
    body += ("\n\nAccuracy: the share of expert start states (drawn as `wmil evaluate-model --expert` draws them, "
             f"{args.starts} per horizon) where DITTO's return on `{args.features}` features over H imagined steps "
             f"(γ = {args.gamma}) is highest for the expert's own first action, the expert's logged actions after it "
             "and common random numbers for every candidate. By phase: the same, for starts that many steps into "
             "their episode (the count of starts in brackets).\n")
    write(args.out or f"reward_horizon-{args.task}.md", "Reward check by imagination horizon", body)


if __name__ == "__main__":
    main()
