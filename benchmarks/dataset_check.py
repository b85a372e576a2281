"""Cost of the always-on dataset check (``wmil datasets check``, run by import, train-model and
imagine before any work) on 1M-step vector datasets.

The datasets are written through the storage API (``DatasetWriter``), not by stepping an
environment: 17-D float32 observations (HalfCheetah's size) with 6-D Box actions, once as
1,000 episodes of 1,000 steps and once as 10,000 episodes of 100 steps (the per-episode
overhead of Minari's one-HDF5-group-per-episode layout shows in the second). For each, the
median of ``--repeats`` checks on a fresh view (page cache warm: the file was just written or
read) is set beside the time to read the same data for training (``AlignedArrays.build``
without its check) measured in the same run, so the ratio says what the check adds.

    python -m benchmarks.dataset_check [--steps 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks.common import table, write


def write_dataset(name: str, episodes: int, length: int, seed: int = 0):
    import gymnasium as gym
    import numpy as np

    from wmil.data.storage import DatasetWriter, Episode

    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (6,), np.float32)
    started = time.perf_counter()
    with DatasetWriter(name, obs_space, act_space) as writer:
        for e in range(episodes):
            terms = np.zeros(length, bool)
            truncs = np.zeros(length, bool)
            truncs[-1] = True
            writer.add(Episode(rng.normal(size=(length + 1, 17)).astype(np.float32),
                               rng.uniform(-1, 1, (length, 6)).astype(np.float32),
                               rng.normal(size=length), terms, truncs))
    return time.perf_counter() - started


def time_check(name: str, repeats: int) -> tuple[float, float, int]:
    """Median seconds of (check, training read without check) and the steps checked."""
    from wmil.data import load
    from wmil.data.check import CheckReport
    from wmil.data.dataset import AlignedArrays

    checks, reads, steps = [], [], 0
    for _ in range(repeats):
        view = load(name)
        started = time.perf_counter()
        report = view.check()
        checks.append(time.perf_counter() - started)
        steps = report.steps
        view = load(name)
        view._report = CheckReport(name, len(view), steps, 0.0, False)  # read as training does, minus the check
        started = time.perf_counter()
        AlignedArrays.build(view)
        reads.append(time.perf_counter() - started)
    return statistics.median(checks), statistics.median(reads), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        os.environ["MINARI_DATASETS_PATH"] = root
        for length in (1000, 100):
            episodes = args.steps // length
            name = f"bench/check-{length}-v0"
            written = write_dataset(name, episodes, length)
            check, read, steps = time_check(name, args.repeats)
            rows.append([f"{episodes:,} × {length:,}", f"{steps:,}", f"{check:.3f}", f"{steps / check / 1e6:.2f}",
                         f"{read:.3f}", f"{check / read:.2f}", f"{written:.1f}"])
            print(rows[-1], flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = table(["episodes × steps", "steps checked", "check s (median)", "M steps/s", "training read s",
                  "check / read", "write s"], rows)
    body += (f"\n\nLoad average when the run ended: {load:.1f} (2 cores; other processes share them). Observations "
             "17-D float32, actions 6-D float32 in [-1, 1], rewards float64: every value is read and checked "
             "(finite, below 1e15, actions inside the Box, flags 0/1 at the last step only).\n")
    write("dataset_check.md", "Dataset check on 1M-step vector datasets", body)


if __name__ == "__main__":
    main()
