"""Collection overhead and sampler throughput.

Collection: recorded env steps/s (``build_dataset`` end to end: policy, recording, HDF5
writes) divided by bare steps/s of the same environment as wmil presents it (``make_env``,
random actions, reset on done), medians of several runs measured side by side. The raw
``gym.make`` rate is shown too, so the cost of wmil's env wrappers is visible.
Targets: ≥ 0.8 (CartPole, LunarLander), ≥ 0.9 (MuJoCo).

Sampling: SequenceBatch (B=50, T=50) and TransitionBatch (B=256) per second from datasets on
disk: a vector dataset held in RAM and a pixel dataset read out of core from HDF5.

    python -m benchmarks.collect [--steps 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


from benchmarks.common import table, write


def bare_rate(make, steps: int) -> float:
    """Steps/s of the env alone: actions are drawn before the clock starts."""
    env = make()
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    started = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - started)
    env.close()
    return rate


def recorded_rate(env_id: str, steps: int, pixels, max_steps, run: int) -> float:
    from wmil.data.build import BuildConfig, build_dataset

    config = BuildConfig(name=f"bench/rec{run}-v0", env=env_id, policy="random", episodes=1, pixels=pixels,
                         max_episode_steps=max_steps, ref_episodes=0)
    # Episodes of a random policy vary in length: record enough of them to cover `steps`.
    probe = build_dataset(config, overwrite=True, progress=False)
    mean_len = max(1, probe.total_steps)
    config.episodes = max(1, steps // mean_len)
    started = time.perf_counter()
    ds = build_dataset(config, overwrite=True, progress=False)
    return ds.total_steps / (time.perf_counter() - started)


def collection(args) -> str:
    import gymnasium as gym

    from wmil.envs import EnvConfig, make_env

    cases = [("CartPole-v1", None, None, args.steps), ("LunarLander-v3", None, None, args.steps),
             ("HalfCheetah-v5", None, None, args.steps // 2), ("CartPole-v1", 64, None, args.steps // 20)]
    rows = []
    for env_id, pixels, max_steps, steps in cases:
        cfg = EnvConfig(env_id, pixels=pixels, max_episode_steps=max_steps)
        raws, bares, recs = [], [], []
        for run in range(args.repeats):  # interleaved, so drift on a shared machine hits all three
            if pixels is None:
                raws.append(bare_rate(lambda: gym.make(env_id), steps))
            bares.append(bare_rate(lambda: make_env(cfg), steps))
            recs.append(recorded_rate(env_id, steps, pixels, max_steps, run))
        raw = statistics.median(raws) if raws else float("nan")
        bare, rec = statistics.median(bares), statistics.median(recs)
        label = env_id + (f" pixels {pixels}" if pixels else "")
        rows.append([label, raw, bare, rec, f"{rec / bare:.2f}"])
        print(rows[-1], flush=True)
    return table(["env", "raw gym.make steps/s", "bare make_env steps/s", "recorded steps/s", "recorded / bare"], rows)


def sampling(args) -> str:
    import wmil.data.dataset as dataset_module
    from wmil.data.build import BuildConfig, build_dataset

    vec = build_dataset(BuildConfig(name="bench/vec-v0", env="HalfCheetah-v5", policy="random", episodes=50,
                                    ref_episodes=0), overwrite=True, progress=False)
    pix = build_dataset(BuildConfig(name="bench/pix-v0", env="CartPole-v1", policy="random", episodes=60,
                                    pixels=64, max_episode_steps=100, ref_episodes=0), overwrite=True, progress=False)
    rows = []
    for label, ds, out_of_core in (("HalfCheetah vector (in RAM)", vec, False), ("CartPole 64×64 pixels (out of core)", pix, True)):
        if out_of_core:
            dataset_module.IN_MEMORY_BYTES = 0
            ds = dataset_module.load(ds.name)
        started = time.perf_counter()
        seq = ds.sequences(50, 50, seed=0, pad=True)
        setup = time.perf_counter() - started
        rates = []
        for sampler, n in ((seq, args.batches), (ds.transitions(256, seed=0), args.batches)):
            started = time.perf_counter()
            for _ in range(n):
                sampler.sample()
            rates.append(n / (time.perf_counter() - started))
        rows.append([label, f"{ds.total_steps:,}", f"{setup:.2f}", rates[0], rates[1]])
        print(rows[-1], flush=True)
    return table(["dataset", "steps", "index/load s", "sequence batches/s (50×50)", "transition batches/s (256)"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    with tempfile.TemporaryDirectory() as root:
        os.environ["MINARI_DATASETS_PATH"] = root
        body = "## Collection overhead (random policy, medians of %d runs)\n\n%s\n\n" % (args.repeats, collection(args))
        body += "## Sampling from disk\n\n" + sampling(args) + "\n"
    write("collect.md", "Collection and sampling throughput", body)


if __name__ == "__main__":
    main()
