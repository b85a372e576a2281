"""Torch CPU threads: updates/s at 1 and 2 threads, on a quiet machine and beside a busy process.

Why: with 2 OpenMP threads on a 2-core machine, every parallel region waits for both threads;
when another process holds one core, the second thread is descheduled and the first spins at
the barrier. A user measured 21.8 updates/s collapse to 0.275 this way (issue #15). This script
measures, for world-model and learner updates of several sizes, updates/s with 1 and 2 threads
(and 2 threads with ``OMP_WAIT_POLICY=PASSIVE``), each in a fresh process, with and without a
pure-Python busy loop on the side. The rows decide wmil's default thread count
(:func:`wmil.runs.default_threads`).

Per run the worker reports the median updates/s over 1-second windows and the slowest window
(a collapse shows there first). Settings are interleaved round by round so machine noise hits
all alike; the load average is printed beside each condition since the machine is shared.

Usage::

    python -m benchmarks.threads                         # all configs, 2 rounds
    python -m benchmarks.threads --configs wm-tiny --rounds 1 --seconds 4

Writes ``benchmarks/results/threads.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> (kind, world model, preset, dataset, learner or None, batch overrides)
CONFIGS = {
    "wm-tiny": ("world_model", "rssm", "tiny", "vector", None),
    "wm-small": ("world_model", "rssm", "small", "vector", None),
    "wm-pixel-small": ("world_model", "rssm", "small", "pixels", None),
    "ditto-tiny": ("learner", "rssm", "tiny", "vector", "ditto"),
    "ditto-small": ("learner", "rssm", "small", "vector", "ditto"),
}
SETTINGS = [("1", {}), ("2", {}), ("2", {"OMP_WAIT_POLICY": "PASSIVE"})]
DATASETS = {"vector": "bench/cartpole-v0", "pixels": "bench/pixel-cartpole-v0"}


def build_data(root: Path) -> None:
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    from wmil.data.build import BuildConfig, build_dataset

    build_dataset(BuildConfig(name=DATASETS["vector"], env="CartPole-v1", policy="expert",
                              epsilon=[0.0, 0.3, 0.6, 1.0], episodes=40, ref_episodes=0), progress=False)
    build_dataset(BuildConfig(name=DATASETS["pixels"], env="CartPole-v1", policy="expert", pixels=64,
                              epsilon=[0.3, 1.0], episodes=12, ref_episodes=0), progress=False)


def worker(config: str, seconds: float) -> dict:
    """Time updates of ``config`` for ``seconds`` in this process (threads already set)."""
    import torch

    from wmil.data.dataset import load
    from wmil.data.dataset import MixedSampler
    from wmil.train.world_model import WorldModelTrainConfig
    from wmil.world_models.base import total_loss
    from wmil.world_models.registry import config_for, make_world_model

    kind, model_name, preset, data, learner = CONFIGS[config]
    torch.manual_seed(0)
    dataset = load(DATASETS[data])
    model = make_world_model(model_name, dataset.spec, config_for(model_name, preset))
    if kind == "world_model":
        train = WorldModelTrainConfig.preset(preset)
        sizes = {"batch_size": train.batch_size, "seq_len": train.seq_len}
        if data == "pixels":
            sizes.update(batch_size=16)  # the pixel-small shape of the peer harness
        sampler = MixedSampler([dataset], sizes["batch_size"], sizes["seq_len"], seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

        def update():
            losses, _, _ = model.loss(sampler.sample())
            optimizer.zero_grad(set_to_none=True)
            total_loss(losses, model.loss_scales).backward()
            optimizer.step()
    else:
        from wmil.algos.base import algorithm_class

        for parameter in model.parameters():
            parameter.requires_grad_(False)
        cls = algorithm_class(learner)
        algo = cls(model.eval(), dataset, cls.config_cls.preset(preset), torch.device("cpu"))
        steps = iter(range(1, 10**9))

        def update():
            algo.update(next(steps))

    for _ in range(2):  # warm-up: allocator, OpenMP pool
        update()
    windows, started = [], time.perf_counter()
    window_start, count = started, 0
    while time.perf_counter() - started < seconds:
        update()
        count += 1
        now = time.perf_counter()
        if now - window_start >= 1.0:
            windows.append(count / (now - window_start))
            window_start, count = now, 0
    if count and not windows:  # slower than one update per second: one window
        windows.append(count / (time.perf_counter() - window_start))
    return {"median": statistics.median(windows), "min": min(windows), "threads": torch.get_num_threads()}


def run_worker(config: str, threads: str, extra_env: dict, seconds: float, data_root: Path) -> dict:
    env = dict(os.environ, MINARI_DATASETS_PATH=str(data_root), OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, **extra_env)
    out = subprocess.run([sys.executable, "-m", "benchmarks.threads", "--worker", config, "--seconds", str(seconds)],
                         env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_process() -> subprocess.Popen:
    """One pure-Python loop: holds one core the way another user's job does."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.seconds)))
        return

    from benchmarks import common

    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp)
        build_data(data_root)
        results: dict[tuple, list[dict]] = {}
        loads: dict[str, list[float]] = {"quiet": [], "busy": []}
        for condition in ("quiet", "busy"):
            for _ in range(args.rounds):
                for config in args.configs:
                    for threads, extra in SETTINGS:
                        busy = busy_process() if condition == "busy" else None
                        try:
                            loads[condition].append(os.getloadavg()[0])
                            r = run_worker(config, threads, extra, args.seconds, data_root)
                        finally:
                            if busy is not None:
                                busy.kill()
                                busy.wait()
                        key = (config, condition, threads + (" passive" if extra else ""))
                        results.setdefault(key, []).append(r)
                        print(key, r, flush=True)
    rows = []
    for config in args.configs:
        quiet1 = statistics.median(r["median"] for r in results[(config, "quiet", "1")])
        for condition in ("quiet", "busy"):
            for threads, extra in SETTINGS:
                label = threads + (" passive" if extra else "")
                rs = results[(config, condition, label)]
                median = statistics.median(r["median"] for r in rs)
                rows.append([config, condition, label, f"{median:.3g}", f"{min(r['min'] for r in rs):.3g}",
                             f"{median / quiet1:.2f}"])
    body = "\n\n".join([
        "updates/s: median over 1-s windows (median of the rounds); slowest window over all rounds; "
        "ratio = median ÷ the quiet 1-thread median of the same config. `busy` = one pure-Python "
        "loop running beside the worker. `2 passive` = 2 threads with OMP_WAIT_POLICY=PASSIVE.",
        f"load average (1 min) when starting the quiet runs: {min(loads['quiet']):.2f}–{max(loads['quiet']):.2f}; "
        f"the busy runs: {min(loads['busy']):.2f}–{max(loads['busy']):.2f} (shared machine: other users' jobs "
        "are in these figures).",
        common.table(["config", "machine", "threads", "updates/s", "slowest window", "÷ quiet 1 thread"], rows),
    ])
    common.write("threads.md", "Torch threads: 1 vs 2, quiet vs a busy core", body)


if __name__ == "__main__":
    main()
