"""Offline imitation quality (BENCHMARKS.md): expert-normalised score per task × algorithm.

Every cell: the world model is trained on the task's "world" dataset (all data, mixed
quality), the learner on the first K episodes of the "expert" dataset, with zero environment
steps during training; the policy is then scored in the real environment on ``--episodes``
episodes (seeds far from the data's). Score = (R − R_random)/(R_expert − R_random) with the
reference returns stored in the expert dataset (success rate for Fetch). Mean ± standard
error over seeds. One world model per task and seed is shared by the algorithms.

    python benchmarks/quality.py --tasks cartpole --algos ditto bc --seeds 0 1 2 --demos 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import RESULTS, table, write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: Per task: recipes, world-model settings, learner settings (the hyperparameters reported).
TASKS = {
    "cartpole": dict(world="cartpole-world.yaml", expert="cartpole-expert.yaml", model="dynamics",
                     wm=dict(steps=1500, batch_size=16, seq_len=32), learner=dict(steps=500),
                     learner_overrides={"actor_lr": "1e-3", "critic_lr": "1e-3"}, demos=[1, 4]),
    "lunar": dict(world="lunar-world.yaml", expert="lunar-expert.yaml", model="dynamics",
                  wm=dict(steps=3000, batch_size=16, seq_len=50), learner=dict(steps=1500),
                  learner_overrides={"actor_lr": "1e-3", "critic_lr": "1e-3"}, demos=[1, 4, 16]),
    "pendulum": dict(world="pendulum-world.yaml", expert="pendulum-expert.yaml", model="dynamics",
                     wm=dict(steps=1500, batch_size=16, seq_len=32), learner=dict(steps=500),
                     learner_overrides={"actor_lr": "1e-3", "critic_lr": "1e-3"}, demos=[1, 4]),
    "pixel-cartpole": dict(world="pixel-cartpole-world.yaml", expert="pixel-cartpole-expert.yaml", model="rssm",
                           wm=dict(steps=3000, batch_size=16, seq_len=32), learner=dict(steps=1000),
                           learner_overrides={}, demos=[4]),
}
MODEL_FREE = {"bc"}
#: Overrides that only some algorithms have (the actor-critic learners).
AC_ONLY = {"actor_lr", "critic_lr"}
DYNAMICS = {"vins"}


def ensure(recipe: str):
    from wmil.data import names
    from wmil.data.build import build_dataset, load_recipe

    config = load_recipe(ROOT / "datasets" / recipe)
    if not names.exists(config.name):
        build_dataset(config, progress=False)
    return config.name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cartpole"])
    parser.add_argument("--algos", nargs="+", default=["ditto", "bc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", nargs="+", type=int, help="expert episodes (default: the task's list)")
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per seed")
    parser.add_argument("--wm-steps", type=int, help="override the task's world-model updates")
    parser.add_argument("--learner-steps", type=int, help="override the learners' updates")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quality"), help="where run dirs are kept (reused)")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="learner key=value overrides")
    args = parser.parse_args()

    from wmil.algos.base import train_policy
    from wmil.config import parse_overrides
    from wmil.eval.evaluate import evaluate_policy
    from wmil.train.world_model import train_world_model

    runs = Path(args.runs)
    cells: dict[tuple, list[float]] = {}
    details = []
    for task in args.tasks:
        spec = TASKS[task]
        world, expert = ensure(spec["world"]), ensure(spec["expert"])
        for seed in args.seeds:
            wm_dir = runs / task / f"wm-{spec['model']}-s{seed}"
            wm_steps = args.wm_steps or spec["wm"]["steps"]
            started = time.perf_counter()
            train_world_model(world, model=spec["model"], preset="small", out=wm_dir, steps=wm_steps, seed=seed,
                              overrides={k: str(v) for k, v in spec["wm"].items() if k != "steps"}, progress=False)
            wm_minutes = (time.perf_counter() - started) / 60
            dyn_dir = None
            for demos in args.demos or spec["demos"]:
                for algo in args.algos:
                    model_dir = None if algo in MODEL_FREE else wm_dir
                    if algo in DYNAMICS:
                        dyn_dir = dyn_dir or runs / task / f"wm-dynamics-s{seed}"
                        train_world_model(world, model="dynamics", preset="small", out=dyn_dir, steps=wm_steps,
                                          seed=seed, progress=False)
                        model_dir = dyn_dir
                    out = runs / task / f"{algo}-k{demos}-s{seed}"
                    started = time.perf_counter()
                    train_policy(algo, model_dir, expert, out=out, preset="small", seed=seed, expert_episodes=demos,
                                 steps=args.learner_steps or spec["learner"]["steps"],
                                 overrides={k: v for k, v in {**spec["learner_overrides"],
                                                              **parse_overrides(args.overrides)}.items()
                                            if algo in ("ditto", "dgail") or k not in AC_ONLY},
                                 progress=False)
                    minutes = (time.perf_counter() - started) / 60
                    report = evaluate_policy(out, episodes=args.episodes, progress=False)
                    score = report.get("success_rate", report.get("normalized_score"))
                    cells.setdefault((task, demos, algo), []).append(score)
                    details.append(dict(task=task, demos=demos, algo=algo, seed=seed, score=score,
                                        ret=report["return_mean"], wm_minutes=wm_minutes, minutes=minutes,
                                        latent_distance=report.get("eval/latent_distance"),
                                        action_accuracy=report.get("eval/action_accuracy")))
                    print(json.dumps(details[-1]), flush=True)
    rows = []
    for (task, demos, algo), scores in cells.items():
        scores = np.asarray(scores, dtype=float)
        stderr = scores.std(ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else float("nan")
        rows.append([task, demos, algo, f"{scores.mean():.3f} ± {stderr:.3f}", len(scores),
                     ", ".join(f"{s:.2f}" for s in scores)])
    body = table(["task", "demos", "algorithm", "normalised score (mean ± s.e.)", "seeds", "per seed"], rows)
    body += "\n\n## Per run\n\n" + table(
        ["task", "demos", "algo", "seed", "score", "return", "WM min", "learner min", "latent dist", "action acc"],
        [[d["task"], d["demos"], d["algo"], d["seed"], f"{d['score']:.3f}", f"{d['ret']:.1f}", f"{d['wm_minutes']:.1f}",
          f"{d['minutes']:.1f}", "" if d["latent_distance"] is None else f"{d['latent_distance']:.3f}",
          "" if d["action_accuracy"] is None else f"{d['action_accuracy']:.3f}"] for d in details])
    body += "\n\n## Settings\n\n" + "\n".join(
        f"- {t}: world model {TASKS[t]['model']} small preset, {TASKS[t]['wm']}; learners small preset, "
        f"{TASKS[t]['learner']} {TASKS[t]['learner_overrides'] or ''}; evaluation {args.episodes} episodes per seed"
        for t in args.tasks)
    name = "quality-" + "-".join(args.tasks) + ".md"
    write(name, "Offline imitation quality", body)
    (RESULTS / name.replace(".md", ".jsonl")).write_text("".join(json.dumps(d) + "\n" for d in details))


if __name__ == "__main__":
    main()
