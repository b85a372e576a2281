"""Crash safety under kill -9 (issue 14): runs of ``wmil train-model`` and ``wmil imagine`` are
killed at random moments — and, in half of the trials, the instant a checkpoint's temporary
file appears (a checkpoint being written) — then resumed to the end with the same command.

Counted after every kill: checkpoints that no longer load (``torch.load(weights_only=True)``),
and after every resume, against an uninterrupted run of the same command: metric rows lost or
duplicated (by step), TensorBoard scalars of a step written twice, and whether the final
checkpoint is bit-identical (every tensor and value equal). Targets: 0, 0, 0 and all.

Each trial may kill its run up to ``--kills-per-run`` times before the final resume. Runs use
the tiny presets on CartPole data recorded at start-up (one thread each, as the tests do).

    python -m benchmarks.faults [--runs 8] [--kills-per-run 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import table, write

WM_STEPS, POLICY_STEPS = 400, 200


def commands(root: Path, reference_wm: Path) -> dict[str, callable]:
    base = [sys.executable, "-m", "cli.main"]
    return {
        "train-model": lambda out: base + [
            "train-model", "--dataset", "fault/world-v0", "--model", "rssm", "--preset", "tiny", "--steps", str(WM_STEPS),
            "--out", str(out), "--quiet", "--device", "cpu", "-o", "checkpoint_every=20", "-o", "log_every=5",
            "-o", "eval_every=100"],
        "imagine": lambda out: base + [
            "imagine", "--algo", "ditto", "--model", str(reference_wm), "--expert", "fault/expert-v0",
            "--expert-episodes", "2", "--preset", "tiny", "--steps", str(POLICY_STEPS), "--out", str(out), "--quiet",
            "--device", "cpu", "-o", "checkpoint_every=10", "-o", "log_every=5", "-o", "eval_every=50"],
    }


def run(command, env, out: Path, final: str = "") -> tuple[float, float]:
    """Run ``command`` to the end: (seconds until its first metrics row, seconds until the
    checkpoint named ``final`` exists), the span in which training happens."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = done = None
    while process.poll() is None:
        now = time.perf_counter() - started
        if first is None and (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size:
            first = now
        if done is None and final and (out / "checkpoints" / final).exists():
            done = now
        time.sleep(0.002)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    wall = time.perf_counter() - started
    return (first if first is not None else wall), (done if done is not None else wall)


def newest_step(out: Path) -> int:
    found = sorted((out / "checkpoints").glob("step_*.pt")) if (out / "checkpoints").is_dir() else []
    return int(found[-1].name[5:13]) if found else 0


def kill_once(command, env, out: Path, timing: tuple[float, float], steps: int, rng: random.Random,
              mid_checkpoint: bool) -> dict:
    """Start ``command``, kill -9 it: at a random moment of the training it has left (the
    training span of an uninterrupted run, shortened by the steps a resumed run skips, after
    its start-up), or the instant a checkpoint's temporary file appears."""
    first, done = timing
    remaining = (done - first) * (1 - newest_step(out) / steps)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.perf_counter()
    deadline = started + (done * 3 if mid_checkpoint else first + rng.uniform(0, remaining))
    checkpoints = out / "checkpoints"
    while process.poll() is None and time.perf_counter() < deadline:
        if mid_checkpoint and checkpoints.is_dir() and any(p.name.endswith(".tmp") for p in checkpoints.iterdir()):
            break
        time.sleep(0.0005 if mid_checkpoint else 0.01)
    alive = process.poll() is None
    if alive:
        process.send_signal(signal.SIGKILL)
    process.wait()
    during_write = checkpoints.is_dir() and any(p.name.endswith(".tmp") for p in checkpoints.iterdir())
    newest = newest_step(out)
    return {"killed": alive, "during_write": alive and during_write, "after_s": time.perf_counter() - started,
            "newest": newest, "after_final": alive and newest == steps}


def unreadable_checkpoints(out: Path) -> int:
    import torch

    bad = 0
    for path in (out / "checkpoints").glob("step_*.pt") if (out / "checkpoints").is_dir() else []:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            bad += 1
    return bad


def metric_steps(out: Path) -> list[int]:
    steps = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        steps.append(json.loads(line)["step"])  # a resumed run must leave no torn line
    return steps


def tensorboard_duplicates(out: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen, duplicates = set(), 0
    for path in out.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                key = (value.tag, event.step)
                duplicates += key in seen
                seen.add(key)
    return duplicates


def same(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def final_checkpoint(out: Path):
    import torch

    return torch.load(sorted((out / "checkpoints").glob("step_*.pt"))[-1], map_location="cpu", weights_only=True)


def prepare(root: Path, env: dict) -> None:
    os.environ.update(env)
    from wmil.data.build import BuildConfig, build_dataset

    build_dataset(BuildConfig(name="fault/world-v0", env="CartPole-v1", policy="expert", epsilon=[0.0, 0.3, 0.6],
                              episodes=18, ref_episodes=0), progress=False)
    build_dataset(BuildConfig(name="fault/expert-v0", env="CartPole-v1", policy="expert", episodes=4, seed=10000,
                              ref_episodes=0), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="Killed runs per command.")
    parser.add_argument("--kills-per-run", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows, details = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "MINARI_DATASETS_PATH": str(root / "datasets"), "WMIL_NUM_THREADS": "1",
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        prepare(root, env)
        reference_wm = root / "reference-train-model"
        cmds = commands(root, reference_wm)
        references, timings = {}, {}
        for name, make in cmds.items():  # train-model first: imagine uses its run
            out = root / f"reference-{name}"
            timings[name] = run(make(out), env, out, f"step_{WM_STEPS if name == 'train-model' else POLICY_STEPS:08d}.pt")
            references[name] = out
        for name, make in cmds.items():
            counts = dict(kills=0, during_write=0, after_final=0, unreadable=0, lost=0, duplicated=0, tb_duplicates=0,
                          identical=0, runs=0)
            steps = WM_STEPS if name == "train-model" else POLICY_STEPS
            reference_steps = metric_steps(references[name])
            reference_final = final_checkpoint(references[name])
            for trial in range(args.runs):
                out = root / f"{name}-{trial}"
                for k in range(args.kills_per_run):
                    mid = (trial + k) % 2 == 1
                    result = kill_once(make(out), env, out, timings[name], steps, rng, mid)
                    counts["kills"] += result["killed"]
                    counts["during_write"] += result["during_write"]
                    counts["after_final"] += result["after_final"]
                    counts["unreadable"] += unreadable_checkpoints(out)
                    details.append(f"{name} run {trial} kill {k}: {'mid-checkpoint watch' if mid else 'random'}, "
                                   f"{'killed' if result['killed'] else 'had finished'} after {result['after_s']:.2f} s"
                                   f"{' while a checkpoint was being written' if result['during_write'] else ''}, "
                                   f"newest checkpoint then: step {result['newest']} of {steps}")
                run(make(out), env, out)  # resume to the end
                logged = metric_steps(out)
                counts["lost"] += len(set(reference_steps) - set(logged))
                counts["duplicated"] += len(logged) - len(set(logged))
                counts["tb_duplicates"] += tensorboard_duplicates(out)
                counts["identical"] += same(final_checkpoint(out), reference_final)
                counts["runs"] += 1
                print(name, trial, counts, flush=True)
            rows.append([name, counts["runs"], f"{counts['kills']} ({args.runs * args.kills_per_run})",
                         counts["during_write"], counts["after_final"], counts["unreadable"],
                         counts["lost"], counts["duplicated"], counts["tb_duplicates"],
                         f"{counts['identical']}/{counts['runs']}"])
    total_kills = sum(int(r[2].split()[0]) for r in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = table(["command", "runs", "kill -9's (of attempts)", "during a checkpoint write", "after the final checkpoint",
                  "unreadable checkpoints", "lost metric rows", "duplicated metric rows", "duplicated TensorBoard steps",
                  "final checkpoint bit-identical"], rows)
    body += (f"\n\n{total_kills} kill -9's in all. train-model: rssm tiny, {WM_STEPS} updates, a checkpoint every 20; "
             f"imagine: DITTO tiny on that model, {POLICY_STEPS} updates, a checkpoint every 10. Random kills fall "
             "uniformly in the training a run has left (an uninterrupted run's span from its first metrics row to "
             "its final checkpoint, shortened by the steps a resumed run skips; an attempt on a run that finished "
             "first is not a kill). 'After the final checkpoint': killed while shutting "
             "down (the resume then reports the run complete). 'During a checkpoint "
             "write': a checkpoint's temporary file existed at the kill. Load average at the end: "
             f"{load:.1f} (2 cores, shared).\n\n<details><summary>every kill</summary>\n\n"
             + "\n".join(f"- {d}" for d in details) + "\n\n</details>\n")
    write("faults.md", "Kill -9 during train-model and imagine", body)


if __name__ == "__main__":
    main()
