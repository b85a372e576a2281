"""Offline imitation quality: expert-normalised score per task × algorithm.

Every cell: the world model is trained on the task's "world" dataset (all data, mixed
quality), the learner on the first K episodes of the "expert" dataset, with zero environment
steps during training; the policy is then scored in the real environment on ``--episodes``
episodes (seeds far from the data's). Score = (R − R_random)/(R_expert − R_random) with the
reference returns stored in the expert dataset (success rate for Fetch). Mean ± standard
error over seeds. One world model per task and seed is shared by the algorithms.

    python -m benchmarks.quality --tasks cartpole --algos ditto bc --seeds 0 1 2 --demos 4
    python -m benchmarks.quality --tasks fetch-push --algos bc vins --demos 100 -o vins.ns_rho=0.05

Results merge into ``results/quality-<tasks>.md`` / ``.jsonl`` (a rerun of a cell and seed
replaces it; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, table, write

ROOT = Path(__file__).resolve().parent.parent

#: Per task: recipes, world-model settings, learner settings (the hyperparameters reported).
#: ``learner_overrides``: "*" for every learner that has the field, "ac" for the actor-critic
#: learners (ditto, dgail), or an algorithm's name.
AC_OVERRIDES = {"ac": {"actor_lr": "1e-3", "critic_lr": "1e-3"}}
#: VINS's reduced states on Fetch (VINS paper, appendix): the flat observation is
#: grip_pos 0:3, object_pos 3:6, object_rel_pos 6:9, gripper fingers 9:11, …, desired_goal 25:28.
#: Push: block and arm (+ the goal, part of the extended state), perturbing the arm;
#: PickAndPlace: block, gripper and arm (+ goal), perturbing the arm or the gripper (';': one
#: group per negative sample). VINS chooses its shooting spread α on held-out demo episodes.
#: π_BC and BC use the MSE loss (the paper's BC; Gaussian-likelihood BC scored 36 % vs 50 %).
FETCH_PUSH_VINS = {"state_indices": "0:6,25:28", "perturb_indices": "0:3"}
FETCH_PICK_VINS = {"state_indices": "0:6,9:11,25:28", "perturb_indices": "0:3;9:11"}
FETCH_BC = {"continuous_loss": "mse"}
TASKS = {
    "cartpole": dict(world="cartpole-world.yaml", expert="cartpole-expert.yaml", model="dynamics",
                     wm=dict(steps=1500, batch_size=16, seq_len=32), learner=dict(steps=500),
                     learner_overrides=AC_OVERRIDES, demos=[1, 4], episodes=50),
    "lunar": dict(world="lunar-world.yaml", expert="lunar-expert.yaml", model="dynamics",
                  wm=dict(steps=3000, batch_size=16, seq_len=50), learner=dict(steps=1500),
                  learner_overrides=AC_OVERRIDES, demos=[1, 4, 16], episodes=50),
    "pendulum": dict(world="pendulum-world.yaml", expert="pendulum-expert.yaml", model="dynamics",
                     wm=dict(steps=1500, batch_size=16, seq_len=32), learner=dict(steps=500),
                     learner_overrides=AC_OVERRIDES, demos=[1, 4], episodes=50),
    "pixel-cartpole": dict(world="pixel-cartpole-world.yaml", expert="pixel-cartpole-expert.yaml", model="rssm",
                           wm=dict(steps=3000, batch_size=16, seq_len=32), learner=dict(steps=1000),
                           learner_overrides={}, demos=[4], episodes=50),
    "fetch-push": dict(world="fetch-push-world.yaml", expert="fetch-push-expert.yaml", model="dynamics",
                       wm=dict(steps=5000, batch_size=64, seq_len=16), learner=dict(steps=5000),
                       learner_overrides={"*": FETCH_BC, "vins": FETCH_PUSH_VINS}, demos=[40, 100, 200], episodes=500),
    "fetch-pick": dict(world="fetch-pick-world.yaml", expert="fetch-pick-expert.yaml", model="dynamics",
                       wm=dict(steps=5000, batch_size=64, seq_len=16), learner=dict(steps=5000),
                       learner_overrides={"*": FETCH_BC, "vins": FETCH_PICK_VINS}, demos=[40, 100, 200], episodes=500),
}
MODEL_FREE = {"bc"}
ACTOR_CRITIC = {"ditto", "dgail"}
#: Learners whose own model is a ``dynamics`` one whatever the task's world model is.
DYNAMICS = {"vins"}


def ensure(recipe: str):
    from wmil.data import names
    from wmil.data.build import build_dataset, load_recipe

    config = load_recipe(ROOT / "datasets" / recipe)
    if not names.exists(config.name):
        build_dataset(config, progress=False)
    return config.name


def algo_fields(algo: str) -> set[str]:
    import dataclasses

    from wmil.algos.base import algorithm_class

    return {f.name for f in dataclasses.fields(algorithm_class(algo).config_cls)}


def learner_overrides(spec: dict, algo: str, cli: dict[str, str]) -> dict[str, str]:
    """The task's overrides for ``algo`` then the command line's: ``key=value`` goes to every
    learner with that field, ``algo.key=value`` to that one only."""
    task = spec["learner_overrides"]
    out = {**task.get("*", {}), **(task.get("ac", {}) if algo in ACTOR_CRITIC else {}), **task.get(algo, {})}
    fields = algo_fields(algo)
    out = {k: v for k, v in out.items() if k in fields}
    for key, value in cli.items():
        target, _, field = key.rpartition(".")
        if (target == algo) or (not target and field in fields):
            out[field] = value
    return out


def result_key(d: dict) -> tuple:
    model = "-" if d["algo"] in MODEL_FREE else d.get("model") or TASKS[d["task"]]["model"]
    algo = d["algo"] + (f" [{d['label']}]" if d.get("label") else "")
    return d["task"], model, d["demos"], algo, d["seed"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["cartpole"], choices=sorted(TASKS))
    parser.add_argument("--algos", nargs="+", default=["ditto", "bc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", nargs="+", type=int, help="expert episodes (default: the task's list)")
    parser.add_argument("--episodes", type=int, help="evaluation episodes per seed (default: the task's, 50 or 500)")
    parser.add_argument("--model", help="world model of the imagination learners (default: the task's)")
    parser.add_argument("--wm-steps", type=int, help="override the task's world-model updates")
    parser.add_argument("--learner-steps", type=int, help="override the learners' updates")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "quality"), help="where run dirs are kept (reused)")
    parser.add_argument("--label", default="", help="names a variant (e.g. an ablation's overrides): its own rows "
                        "in the table and its own run dirs")
    parser.add_argument("--fresh", action="store_true", help="drop earlier results of these tasks instead of merging")
    parser.add_argument("-o", dest="overrides", action="append", default=[],
                        help="learner overrides key=value (every learner with the field) or algo.key=value")
    args = parser.parse_args()

    from wmil.train.policy import train_policy
    from wmil.config import parse_overrides
    from wmil.eval.evaluate import evaluate_policy
    from wmil.train.world_model import train_world_model

    cli = parse_overrides(args.overrides)
    for key in cli:
        target, _, field = key.rpartition(".")
        if not any(field in algo_fields(a) for a in ([target] if target else args.algos)):
            parser.error(f"-o {key}: no algorithm in {args.algos} has a field {field!r}")
    runs = Path(args.runs)
    details = []

    def world_model(task, spec, model, seed):
        out = runs / task / f"wm-{model}-s{seed}"
        started = time.perf_counter()
        train_world_model(ensure(spec["world"]), model=model, preset="small", out=out,
                          steps=args.wm_steps or spec["wm"]["steps"], seed=seed,
                          overrides={k: str(v) for k, v in spec["wm"].items() if k != "steps"}, progress=False)
        return out, (time.perf_counter() - started) / 60

    for task in args.tasks:
        spec = TASKS[task]
        expert = ensure(spec["expert"])
        model = args.model or spec["model"]
        episodes = args.episodes or spec["episodes"]
        for seed in args.seeds:
            models = {}
            for demos in args.demos or spec["demos"]:
                for algo in args.algos:
                    kind = None if algo in MODEL_FREE else "dynamics" if algo in DYNAMICS else model
                    if kind is not None and kind not in models:
                        models[kind] = world_model(task, spec, kind, seed)
                    model_dir, wm_minutes = models[kind] if kind else (None, 0.0)
                    tag = "" if kind in (None, spec["model"]) else f"-{kind}"
                    label = f"-{args.label}" if args.label else ""
                    out = runs / task / f"{algo}{tag}{label}-k{demos}-s{seed}"
                    overrides = learner_overrides(spec, algo, cli)
                    started = time.perf_counter()
                    train_policy(algo, model_dir, expert, out=out, preset="small", seed=seed, expert_episodes=demos,
                                 steps=args.learner_steps or spec["learner"]["steps"], overrides=overrides,
                                 progress=False)
                    minutes = (time.perf_counter() - started) / 60
                    started = time.perf_counter()
                    report = evaluate_policy(out, episodes=episodes, progress=False)
                    # Fetch: success at any step, the VINS paper's protocol (its environment stops at
                    # the goal); success at the last step is kept as success_final.
                    score = report.get("success_any", report.get("normalized_score"))
                    details.append(dict(task=task, model=kind or "-", demos=demos, algo=algo, label=args.label,
                                        seed=seed, score=score,
                                        ret=report["return_mean"], success_final=report.get("success_rate"),
                                        wm_minutes=wm_minutes, minutes=minutes,
                                        eval_minutes=(time.perf_counter() - started) / 60, episodes=episodes,
                                        overrides=overrides,
                                        latent_distance=report.get("eval/latent_distance"),
                                        action_accuracy=report.get("eval/action_accuracy")))
                    print(json.dumps(details[-1]), flush=True)
    report_results(args, details)


def report_results(args, details: list[dict]) -> None:
    name = "quality-" + "-".join(args.tasks) + ".md"
    jsonl = RESULTS / name.replace(".md", ".jsonl")
    if jsonl.exists() and not args.fresh:      # merge: a rerun replaces the same cell and seed
        new = {result_key(d) for d in details}
        earlier = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        details = [d for d in earlier if result_key(d) not in new] + details
    details.sort(key=lambda d: (args.tasks.index(d["task"]) if d["task"] in args.tasks else 99,
                                str(d.get("model")), d["demos"], d["algo"], d["seed"]))
    cells: dict[tuple, list[dict]] = {}
    for d in details:
        cells.setdefault(result_key(d)[:4], []).append(d)

    def mean_se(values) -> str:
        values = np.asarray(values, dtype=float)
        stderr = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
        return f"{values.mean():.3f} ± {stderr:.3f}"

    rows = []
    for (task, model, demos, algo), runs_ in cells.items():
        scores = [d["score"] for d in runs_]
        finals = [d["success_final"] for d in runs_ if d.get("success_final") is not None]
        rows.append([task, model, demos, algo, mean_se(scores), mean_se(finals) if finals else "", len(scores),
                     ", ".join(f"{s:.2f}" for s in scores)])
    body = table(["task", "model", "demos", "algorithm", "score (mean ± s.e.)", "final (Fetch)", "seeds", "per seed"],
                 rows)
    body += ("\n\nScore: expert-normalised return, or where the environment reports success (Fetch) the success "
             "rate at any step of the episode (the VINS paper's protocol: its environment stops at the goal); "
             "'final' is the success rate at the episode's last step (the gymnasium-robotics convention).")
    body += "\n\n## Per run\n\n" + table(
        ["task", "model", "demos", "algo", "seed", "score", "final", "return", "WM min", "learner min", "eval min",
         "latent dist", "action acc", "overrides"],
        [[*result_key(d),
          f"{d['score']:.3f}", "" if d.get("success_final") is None else f"{d['success_final']:.3f}",
          f"{d['ret']:.1f}", f"{d['wm_minutes']:.1f}", f"{d['minutes']:.1f}",
          f"{d.get('eval_minutes', float('nan')):.1f}",
          "" if d["latent_distance"] is None else f"{d['latent_distance']:.3f}",
          "" if d["action_accuracy"] is None else f"{d['action_accuracy']:.3f}",
          " ".join(f"{k}={v}" for k, v in (d.get("overrides") or {}).items())] for d in details])
    body += "\n\n## Settings\n\n" + "\n".join(
        f"- {t}: world model {args.model or TASKS[t]['model']} small preset, {TASKS[t]['wm']}; learners small "
        f"preset, {TASKS[t]['learner']}, overrides {TASKS[t]['learner_overrides'] or 'none'}; evaluation "
        f"{args.episodes or TASKS[t]['episodes']} episodes per seed" for t in args.tasks)
    png = plot_cells(cells, RESULTS / name.replace(".md", ".png"))
    body += f"\n\n![score against demos]({png.name})"
    write(name, "Offline imitation quality", body)
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in details))


def plot_cells(cells: dict[tuple, list[dict]], path: Path) -> Path:
    """One panel per (task, world model) pair of the imitation learners: score against the
    number of demos, mean ± s.e. over seeds, one line per algorithm (BC on every panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(task, model) for task, model, _, _ in cells if model != "-"}) or \
        sorted({(task, model) for task, model, _, _ in cells})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (task, model) in zip(axes.flat, panels):
        algos = sorted({a for t, m, _, a in cells if t == task and m in (model, "-")})
        for algo in algos:
            points = sorted((demos, [d["score"] for d in runs]) for (t, m, demos, a), runs in cells.items()
                            if t == task and a == algo and m in (model, "-"))
            x = [demos for demos, _ in points]
            mean = [float(np.mean(v)) for _, v in points]
            se = [float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(x, mean, yerr=se, marker="o", capsize=3, label=algo)
        ax.set_xscale("log")
        ax.set_xticks(sorted({demos for t, _, demos, _ in cells if t == task}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{task} ({model})")
        ax.set_xlabel("expert episodes")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
