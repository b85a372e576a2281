"""Imagination-learner throughput on the CPU: updates/s of each algorithm, and latent steps/s of
the imagined rollout, in fp32 and bf16 — optionally side by side with another wmil commit.

One update = what ``wmil imagine`` does per step (``Learner.train_step``: sample starts, imagine
H steps in the world model's prior, rewards, actor and critic steps), on a world model in the
'small' preset (``rssm``: deter 200, 32 × 32 categorical latents; random weights — the cost of an
update does not depend on what the model learned) and the algorithm's 'small' preset (DITTO:
256 starts × H 15). Data are synthetic (a CartPole-sized task: 4-dim observations, 2 actions,
40 world and 4 expert episodes of 200 steps; a Pendulum-sized continuous one for DITTO with
dynamics backprop), written through the storage API, so the script needs no downloads.

Each measurement runs in a long-lived worker process per source tree (this checkout, and with
``--compare REV`` a ``git worktree`` of REV); the main process asks the workers round-robin, one
at a time, so machine noise hits every row alike, and reports the median of ``--rounds``. A
request runs updates of one learner for at least ``--seconds`` after its warm-up (the first
request of a learner builds it and runs 3 updates). ``bf16`` wraps the update in
``wmil.precision.autocast`` (what ``wmil imagine --precision bf16`` does); on a tree without the
learners' precision option it is a plain autocast, reported for information only.

Usage (from the repository root, on a quiet machine)::

    python -m benchmarks.imagination --threads 1 2
    python -m benchmarks.imagination --algos ditto --compare 1de4104 --threads 2

Writes ``benchmarks/results/imagination.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALGOS = ["ditto", "dgail", "dbc", "sqil", "gpril", "ditto-continuous"]
#: The issue's reference: DITTO on rssm small, 256 × 15, 2 threads, before this work (4.3 updates/s).
TARGET = {"ditto": 9.0}


# ------------------------------------------------------------------------------------- worker
# The worker imports only wmil (from PYTHONPATH: this checkout or the compared tree) and the
# standard library, so it runs against any commit that has the learner API.


def _write_task(name: str, discrete: bool, episodes: int, length: int, seed: int):
    import gymnasium as gym
    import numpy as np

    from wmil.data import load
    from wmil.data.storage import DatasetWriter, Episode

    rng = np.random.default_rng(seed)
    dim = 4 if discrete else 3
    obs_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
    act_space = gym.spaces.Discrete(2) if discrete else gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    with DatasetWriter(name, obs_space, act_space) as writer:
        for e in range(episodes):
            obs = np.cumsum(rng.normal(0, 0.1, (length + 1, dim)), 0).astype(np.float32)
            if discrete:
                actions = (obs[:-1, 0] > 0).astype(np.int64)
            else:
                actions = np.clip(-2 * obs[:-1, :1], -2, 2).astype(np.float32)
            terms, truncs = np.zeros(length, bool), np.zeros(length, bool)
            truncs[-1] = True
            writer.add(Episode(obs, actions, np.ones(length, np.float32), terms, truncs, seed=e))
    return load(name)


def _setup(root: Path) -> None:
    """The synthetic datasets and the two world-model runs (1 update each) under ``root``."""
    from wmil.train.world_model import train_world_model

    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    for kind, discrete in (("disc", True), ("cont", False)):
        world = _write_task(f"bench/{kind}-world-v0", discrete, 40, 200, 0)
        _write_task(f"bench/{kind}-expert-v0", discrete, 4, 200, 1)
        train_world_model(world, model="rssm", preset="small", steps=1, out=root / f"wm-{kind}", device="cpu",
                          progress=False, overrides={"batch_size": "16", "seq_len": "32", "log_every": "1",
                                                     "eval_every": "1", "checkpoint_every": "1"})


class _Bench:
    def __init__(self, root: Path):
        os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
        self.root = root
        self.learners: dict = {}
        self.warm: set = set()   # (algo, precision, what) already warmed up
        self.step = 0            # update counter passed to train_step
        self.faults = 0.0        # minor page faults per call of the last measurement

    def learner(self, algo: str):
        import torch

        from wmil.algos.base import algorithm_class
        from wmil.config import build_config
        from wmil.data import load
        from wmil.runs import seed_everything
        from wmil.train.world_model import load_world_model

        if algo not in self.learners:
            name, _, variant = algo.partition("-")
            kind = "cont" if variant == "continuous" else "disc"
            world_model = load_world_model(self.root / f"wm-{kind}", "cpu")
            for parameter in world_model.parameters():
                parameter.requires_grad_(False)
            cls = algorithm_class(name)
            config = build_config(cls.config_cls, "small", {}, name)
            seed_everything(0)
            self.learners[algo] = cls(world_model, load(f"bench/{kind}-expert-v0"), config, torch.device("cpu"))
        return self.learners[algo]

    def measure(self, algo: str, precision: str, seconds: float, what: str) -> float:
        """Updates/s (``what='update'``) or latent steps/s of the rollout alone (``'rollout'``)."""
        import contextlib
        import time

        import torch

        learner = self.learner(algo)
        if precision == "bf16":
            try:
                from wmil.precision import autocast
                context = lambda: autocast("cpu", "bf16")  # noqa: E731
            except ImportError:
                context = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        else:
            context = contextlib.nullcontext
        if what == "rollout":
            from wmil.imagination.actor_critic import imagine

            def work():
                start = learner.sample_starts()[0]
                imagine(learner.world_model, learner.actor, start, learner.config.horizon, learner.config.features)
            per_call = learner.config.batch_size * learner.config.horizon
        else:
            def work():
                self.step += 1
                learner.train_step(self.step)
            per_call = 1
        key = (algo, precision, what)
        with context():
            if key not in self.warm:
                for _ in range(3):
                    work()
                self.warm.add(key)
            count, begin, faults = 0, time.perf_counter(), _minor_faults()
            while True:
                work()
                count += 1
                elapsed = time.perf_counter() - begin
                if elapsed >= seconds:
                    self.faults = (_minor_faults() - faults) / count
                    return count * per_call / elapsed


def _minor_faults() -> int:
    """Minor page faults of this process so far (a page the kernel had to map and zero)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def worker(root: str, threads: int) -> None:
    """Answer one JSON request per stdin line with one JSON line on stdout."""
    import torch

    torch.set_num_threads(threads)
    bench = _Bench(Path(root))
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the library prints stays out of the protocol
    for line in sys.stdin:
        request = json.loads(line)
        try:
            value = bench.measure(request["algo"], request["precision"], request["seconds"], request["what"])
            reply = {"value": value, "faults": bench.faults}
        except Exception as error:  # reported as a row, e.g. an algorithm the compared tree lacks
            reply = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --------------------------------------------------------------------------------------- main


class _Worker:
    def __init__(self, label: str, tree: Path, root: Path, threads: int):
        env = {**os.environ, "PYTHONPATH": str(tree), "WMIL_NUM_THREADS": str(threads),
               "OMP_NUM_THREADS": str(threads)}
        self.label = label
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(root),
                                         "--threads", str(threads)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=tree)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker of {self.label} exited (see its stderr above)")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _commit(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=tree).stdout.strip() or "unknown"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="least time per measurement")
    parser.add_argument("--compare", help="also measure this git revision (a temporary worktree), fp32 only")
    parser.add_argument("--no-rollout", action="store_true", help="skip the rollout-only rows")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "imagination.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.threads[0])

    from benchmarks.common import stamp, table, write

    stamped = stamp().replace(str(Path(__file__).resolve()), "-m benchmarks.imagination")
    scratch = Path(tempfile.mkdtemp(prefix="wmil-imagination-"))
    trees = [("this checkout", ROOT)]
    try:
        if args.compare:
            other = scratch / "compare"
            subprocess.run(["git", "worktree", "add", "--detach", str(other), args.compare], cwd=ROOT, check=True,
                           capture_output=True)
            trees.append((f"{args.compare}", other))
        setup = subprocess.run([sys.executable, "-c", "import sys; from benchmarks.imagination import _setup; "
                                "from pathlib import Path; _setup(Path(sys.argv[1]))", str(scratch)],
                               cwd=ROOT, env={**os.environ, "WMIL_NUM_THREADS": "1"})
        if setup.returncode:
            raise SystemExit("setting up the synthetic task failed (see above)")
        jobs = []  # (tree label, threads, algo, precision, what)
        for threads in args.threads:
            for label, _ in trees:
                for algo in args.algos:
                    for precision in (args.precisions if label == "this checkout" else ["fp32"]):
                        jobs.append((label, threads, algo, precision, "update"))
                        if algo in ("ditto", "ditto-continuous") and not args.no_rollout:
                            jobs.append((label, threads, algo, precision, "rollout"))
        workers = {(label, threads): _Worker(label, tree, scratch, threads)
                   for threads in args.threads for label, tree in trees}
        values: dict = {job: [] for job in jobs}
        faults: dict = {job: [] for job in jobs}
        errors: dict = {}
        for round_ in range(args.rounds):
            for job in jobs:
                label, threads, algo, precision, what = job
                reply = workers[(label, threads)].ask(algo=algo, precision=precision, seconds=args.seconds, what=what)
                if "error" in reply:
                    errors[job] = reply["error"]
                else:
                    values[job].append(reply["value"])
                    faults[job].append(reply.get("faults", 0.0))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        for w in workers.values():
            w.close()
        commits = {label: _commit(tree) for label, tree in trees}
    finally:
        if args.compare:
            subprocess.run(["git", "worktree", "remove", "--force", str(scratch / "compare")], cwd=ROOT,
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)

    def median(job):
        return statistics.median(values[job]) if values[job] else None

    rows = []
    for job in jobs:
        label, threads, algo, precision, what = job
        if what != "update":
            continue
        value = median(job)
        base = median((trees[-1][0], threads, algo, "fp32", "update")) if args.compare else None
        ratio = f"{value / base:.2f}×" if value and base and label == "this checkout" else ""
        target = TARGET.get(algo) if threads == 2 else None
        rows.append([f"{label} ({commits[label]})", threads, algo, precision,
                     f"{value:.2f}" if value else errors.get(job, "—"), ratio,
                     f"≥ {target:g}" if target else "",
                     f"{statistics.median(faults[job]):,.0f}" if faults[job] else "—"])
    body = [table(["source", "threads", "algorithm", "precision", "updates/s", f"÷ {args.compare} fp32"
                   if args.compare else "ratio", "target", "page faults / update"], rows)]
    rollout = [job for job in jobs if job[4] == "rollout"]
    if rollout:
        body.append("Imagined rollout alone (starts, H steps of actor + prior, with the actor's graph), latent "
                    "steps/s (B × H per second):\n\n" + table(
                        ["source", "threads", "algorithm", "precision", "latent steps/s"],
                        [[f"{j[0]} ({commits[j[0]]})", j[1], j[2], j[3],
                          f"{median(j):,.0f}" if median(j) else errors.get(j, "—")] for j in rollout]))
    body.append(f"Median of {args.rounds} rounds of ≥ {args.seconds:g} s per row, workers asked round-robin. "
                "Settings: world model rssm 'small' (random weights), each algorithm's 'small' preset "
                "(DITTO/D-GAIL: 256 starts × H 15).")
    write(Path(args.out).name, "Imagination-learner throughput", "\n\n".join(body), Path(args.out).parent,
          stamped=stamped)


if __name__ == "__main__":
    main()
