"""Quality of the scripted experts (wmil.data.experts) against a uniformly random policy.

Each expert and the random policy play ``--episodes`` episodes with seeds 0..N-1 in
``make_env(EnvConfig(env_id))`` (vector observations; ALE games produce 64x64 pixels, the
expert reads the RAM in ``info["state"]``). Writes ``benchmarks/results/experts.md``.

    python -m benchmarks.experts [--envs CartPole-v1 ALE/Pong-v5 ...] [--episodes 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.common import cpu_model

from wmil.data.experts import EXPERT_ENV_IDS, make_expert  # noqa: E402
from wmil.envs import EnvConfig, make_env  # noqa: E402


def run_episode(env_id: str, seed: int, policy: str) -> dict:
    """One seeded episode; returns return, length, final is_success (NaN if absent), seconds."""
    t0 = time.perf_counter()
    env = make_env(EnvConfig(env_id))
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    expert = None
    if policy == "expert":
        expert = make_expert(env_id)
        expert.reset(np.random.default_rng(seed))
    total, steps = 0.0, 0
    while True:
        if expert is not None:
            action = expert.act(info["state"])
            if not env.action_space.contains(action):
                raise AssertionError(f"{env_id}: expert action {action!r} outside {env.action_space}")
        else:
            action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if terminated or truncated:
            break
    env.close()
    success = float(info["is_success"]) if "is_success" in info else float("nan")
    return {"return": total, "length": steps, "success": success, "seconds": time.perf_counter() - t0}


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # MinAtar games have no time limit of their own (an expert plays for ever): they are measured by
    # `python -m benchmarks.minatar experts` with the recipes' limit.
    parser.add_argument("--envs", nargs="+", default=[e for e in EXPERT_ENV_IDS if not e.startswith("MinAtar/")],
                        help="env ids (default: all experts but MinAtar's)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per policy, seeds 0..N-1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "experts.md")
    args = parser.parse_args(argv)

    tasks = [(e, s, p) for e in args.envs for p in ("expert", "random") for s in range(args.episodes)]
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_episode, *zip(*tasks)))
    else:
        results = [run_episode(*t) for t in tasks]
    wall = time.perf_counter() - t0
    by_key: dict[tuple[str, str], list[dict]] = {}
    for (env_id, _, policy), res in zip(tasks, results):
        by_key.setdefault((env_id, policy), []).append(res)

    import torch

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    lines = [
        "# Scripted experts vs. a random policy",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- commit: `{_git_head()}` (plus uncommitted changes, if any)",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"python {platform.python_version()}",
        f"- command: `{command}`",
        f"- {args.episodes} episodes per policy, seeds 0..{args.episodes - 1}, `make_env(EnvConfig(env_id))` "
        f"(vector observations; ALE: 64x64 grayscale pixels, sticky actions, frame skip 4, "
        f"the expert reads the RAM); wall time {wall:.0f} s with {args.workers} worker(s)",
        "",
        "| env | expert return (mean ± std) | random return (mean ± std) | expert success | random success | "
        "expert episode length | episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in args.envs:
        ex, rnd = by_key[(env_id, "expert")], by_key[(env_id, "random")]
        er = np.array([r["return"] for r in ex])
        rr = np.array([r["return"] for r in rnd])
        es = np.array([r["success"] for r in ex])
        rs = np.array([r["success"] for r in rnd])
        el = np.array([r["length"] for r in ex])
        succ = f"{100 * np.mean(es):.0f} %" if not np.isnan(es).all() else "–"
        rsucc = f"{100 * np.mean(rs):.0f} %" if not np.isnan(rs).all() else "–"
        lines.append(
            f"| {env_id} | {er.mean():.1f} ± {er.std():.1f} | {rr.mean():.1f} ± {rr.std():.1f} | {succ} | "
            f"{rsucc} | {el.mean():.0f} | {len(er)} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "Success is `info[\"is_success\"]` at the final step (Fetch). Std is the population std over episodes.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
