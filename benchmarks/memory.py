"""Memory of ``wmil train-model`` on large datasets, and how fast sequences come off the disk.

For a vector dataset of ``--vector-steps`` steps (default 1M: 1,000 episodes × 1,000 steps of a
17-dim observation and a 6-dim action, HalfCheetah-sized) and a 64×64 pixel dataset of
``--pixel-gb`` GB of frames, both written through the storage API (``DatasetWriter``; random
data — the cost of reading does not depend on what is in the frames), the script

* runs ``wmil train-model --model rssm --preset small`` for ``--updates`` updates in a child
  process and reports its peak resident memory (``ru_maxrss`` of that child) and its updates/s;
  the pixel run is made to read its frames from disk (``WMIL_IN_MEMORY_BYTES`` below the
  dataset's size, as any dataset above the 2 GiB default is read), so its memory must not grow
  with the dataset;
* times the training sampler alone (``MixedSampler``: 50 windows of 50 steps) with the dataset
  file dropped from the page cache first (``posix_fadvise(DONTNEED)``, no root needed), and warm,
  against the update rate of the model that trains on it (target: sequences come ≥ 5× faster
  than the model consumes them).

Targets (issue 16): peak RSS ≤ 2 GB on the 1M-step vector dataset. A pixel dataset larger than
this machine's RAM is the issue's case; ``--pixel-gb`` above the RAM size measures it (it takes
disk space and minutes to write), the default keeps the run short and shows whether memory
follows the dataset or stays flat.

Usage (from the repository root)::

    python -m benchmarks.memory                       # 1M vector steps, 2 GB of pixels
    python -m benchmarks.memory --pixel-gb 30 --root /big/disk

Writes ``benchmarks/results/memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_vector(name: str, steps: int, episode_len: int = 1000) -> float:
    """A vector dataset of ``steps`` steps; returns its size on disk in GB."""
    import gymnasium as gym

    from wmil.data.storage import DatasetWriter, Episode

    rng = np.random.default_rng(0)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    with DatasetWriter(name, obs_space, act_space) as writer:
        for e in range(max(1, steps // episode_len)):
            obs = np.cumsum(rng.normal(0, 0.1, (episode_len + 1, 17)), 0).astype(np.float32)
            actions = rng.uniform(-1, 1, (episode_len, 6)).astype(np.float32)
            truncs = np.zeros(episode_len, bool)
            truncs[-1] = True
            writer.add(Episode(obs, actions, rng.normal(size=episode_len).astype(np.float32),
                               np.zeros(episode_len, bool), truncs, seed=e))
    return _size(name)


def write_pixels(name: str, gigabytes: float, episode_len: int = 1000) -> float:
    """A (1, 64, 64) uint8 pixel dataset of about ``gigabytes`` GB of frames; its size in GB."""
    import gymnasium as gym

    from wmil.data.storage import DatasetWriter, Episode

    rng = np.random.default_rng(0)
    frames = int(gigabytes * 1e9 / (64 * 64))
    obs_space = gym.spaces.Box(0, 255, (1, 64, 64), np.uint8)
    act_space = gym.spaces.Discrete(3)
    with DatasetWriter(name, obs_space, act_space) as writer:
        for e in range(max(1, frames // (episode_len + 1))):
            obs = rng.integers(0, 256, (episode_len + 1, 1, 64, 64), dtype=np.uint8)
            truncs = np.zeros(episode_len, bool)
            truncs[-1] = True
            writer.add(Episode(obs, rng.integers(0, 3, episode_len), np.zeros(episode_len, np.float32),
                               np.zeros(episode_len, bool), truncs, seed=e))
    return _size(name)


def _size(name: str) -> float:
    from wmil.data import names

    path = names.resolve(name)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e9


def train(name: str, out: Path, updates: int, env: dict) -> dict:
    """Peak RSS (GB) and updates/s of ``wmil train-model`` on ``name`` in a child process."""
    args = [sys.executable, "-m", "cli.main", "train-model", "--dataset", name, "--model", "rssm", "--preset", "small",
            "--steps", str(updates), "--device", "cpu", "--quiet", "--out", str(out), "-o", f"log_every={updates}",
            "-o", f"eval_every={updates}", "-o", f"checkpoint_every={updates}", "-o", "eval_batches=1"]
    started = time.perf_counter()
    child = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"train-model on {name} failed:\n{child.stderr.read()[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rate = next(r["perf/updates_per_s"] for r in reversed(rows) if "perf/updates_per_s" in r)
    return {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "updates_per_s": rate, "wall_s": seconds}


def sampler_rate(name: str, batches: int, cold: bool) -> float:
    """Sequence batches/s of the training sampler (50 × 50), the file dropped from the page cache
    first when ``cold``."""
    from wmil.data import load, names
    from wmil.data.dataset import MixedSampler

    dataset = load(name)
    sampler = MixedSampler([dataset], 50, 50, seed=1)
    if cold:
        for path in Path(names.resolve(name)).rglob("*.hdf5"):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # pages still dirty from writing cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    started = time.perf_counter()
    for _ in range(batches):
        sampler.sample()
    return batches / (time.perf_counter() - started)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vector-steps", type=int, default=1_000_000)
    parser.add_argument("--pixel-gb", type=float, default=2.0)
    parser.add_argument("--updates", type=int, default=10, help="train-model updates per run")
    parser.add_argument("--batches", type=int, default=20, help="sampler batches per timing")
    parser.add_argument("--root", help="where the datasets are written (default: a temporary directory)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.md"))
    args = parser.parse_args(argv)

    from benchmarks.common import stamp, table, write

    stamped = stamp().replace(str(Path(__file__).resolve()), "-m benchmarks.memory")
    scratch = Path(args.root or tempfile.mkdtemp(prefix="wmil-memory-"))
    os.environ["MINARI_DATASETS_PATH"] = str(scratch / "minari")
    env = {**os.environ, "WMIL_NUM_THREADS": os.environ.get("WMIL_NUM_THREADS", "1")}
    rows = []
    try:
        cases = [("vector", "mem/vector-v0", lambda n: write_vector(n, args.vector_steps), {})]
        if args.pixel_gb > 0:
            # out of core as any pixel dataset above the default 2 GiB: the limit set below its size
            cases.append(("pixels (64×64, read from disk)", "mem/pixel-v0", lambda n: write_pixels(n, args.pixel_gb),
                          {"WMIL_IN_MEMORY_BYTES": str(64 * 2**20)}))
        for label, name, writer, extra in cases:
            started = time.perf_counter()
            size = writer(name)
            written = time.perf_counter() - started
            run = train(name, scratch / f"run-{name.split('/')[1]}", args.updates, {**env, **extra})
            saved = {k: os.environ.get(k) for k in extra}
            os.environ.update(extra)
            try:
                cold = sampler_rate(name, args.batches, cold=True)
                warm = sampler_rate(name, args.batches, cold=False)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            rows.append([label, f"{size:.3f}", f"{written:.0f}", f"{run['peak_rss_gb']:.2f}",
                         f"{run['updates_per_s']:.2f}", f"{cold:.1f}", f"{warm:.1f}",
                         f"{cold / run['updates_per_s']:.0f}×"])
            print(rows[-1], file=sys.stderr)
    finally:
        if not args.root:
            shutil.rmtree(scratch, ignore_errors=True)
    body = table(["dataset", "size on disk (GB)", "write s", "train-model peak RSS (GB)", "model updates/s",
                  "sampler batches/s (cold cache)", "sampler batches/s (warm)", "cold sampler ÷ model"], rows)
    body += (f"\n\nModel: rssm 'small' preset (batch 50 × 50), {args.updates} updates in a child process, "
             f"{env['WMIL_NUM_THREADS']} torch thread(s); peak RSS is that child's `ru_maxrss`. Sampler: "
             "`MixedSampler`, 50 windows of 50 steps per batch, the dataset's HDF5 file dropped from the page "
             "cache before the cold timing. Targets: peak RSS ≤ 2 GB on 1M vector steps; sampler ≥ 5× the "
             "model's update rate.")
    write(Path(args.out).name, "Memory and data throughput of train-model on large datasets", body,
          Path(args.out).parent, stamped=stamped)


if __name__ == "__main__":
    main()
