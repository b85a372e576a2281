"""Do 64×64 frames carry the state? The measurement behind the choice of the pixel task (#13).

For each candidate task, ``--episodes`` episodes are recorded at 64×64 RGB through
``make_env(EnvConfig(id, pixels=64))`` by the scripted expert with ε ∈ {0, 0.3, 0.6, 1} (the
pixel recipes' mix), keeping the simulator state of every frame. Reported:

- on the expert's own frames (ε = 0): per-pixel std over time (0-255) and the mean absolute
  change between consecutive frames — what the demonstrations show a learner;
- a linear probe: ridge regression from [frame_t, frame_t − frame_{t−1}] (PCA to 256
  dimensions, fitted on training episodes) to each standardised state coordinate; R² on
  held-out episodes (1 = the state is a linear read-out of two frames, 0 = nothing).

``cartpole-crop`` is CartPole rendered at full size and cropped to the middle 240×240 pixels
(the cart's track centre and the pole) before the same 64×64 resize, to test whether zooming
in makes the pole visible. Writes ``results/pixel_task.md``.

    python -m benchmarks.pixel_task [--episodes 24]
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import table, write

CANDIDATES = {
    "cartpole": ("CartPole-v1", ["x", "x_dot", "theta", "theta_dot"], None),
    "cartpole-crop": ("CartPole-v1", ["x", "x_dot", "theta", "theta_dot"], "crop"),
    "pendulum": ("Pendulum-v1", ["cos θ", "sin θ", "θ_dot"], None),
    "mountaincar": ("MountainCar-v0", ["position", "velocity"], None),
}
EPSILONS = (0.0, 0.3, 0.6, 1.0)


def record(env_id: str, variant, episodes: int, max_steps: int):
    """[(frames (T+1, 3, 64, 64) uint8, states (T+1, S), epsilon)] per episode."""
    from wmil.data.experts import make_expert
    from wmil.envs import EnvConfig, make_env
    from wmil.envs.wrappers import resize_frame

    env = make_env(EnvConfig(env_id, pixels=64, max_episode_steps=max_steps))
    out = []
    for k in range(episodes):
        eps = EPSILONS[k % len(EPSILONS)]
        rng = np.random.default_rng(k)
        obs, info = env.reset(seed=k)
        env.action_space.seed(k)
        expert = make_expert(env_id)
        expert.reset(rng)

        def frame(o):
            if variant != "crop":
                return o
            full = env.unwrapped.render()                      # (400, 600, 3)
            h, w = full.shape[:2]
            crop = full[h // 2 - 140:h // 2 + 100, w // 2 - 120:w // 2 + 120]
            return resize_frame(crop, 64, False)

        frames, states, done = [frame(obs)], [info["state"]], False
        while not done:
            action = env.action_space.sample() if rng.random() < eps else expert.act(info["state"])
            obs, _, terminated, truncated, info = env.step(action)
            frames.append(frame(obs))
            states.append(info["state"])
            done = terminated or truncated
        out.append((np.stack(frames), np.stack(states).astype(np.float64), eps))
    env.close()
    return out


def probe(episodes, dims: int = 256, ridge: float = 1.0) -> np.ndarray:
    """Held-out R² per state coordinate of a ridge probe on [frame, frame difference]."""
    xs, ys, groups = [], [], []
    for i, (frames, states, _) in enumerate(episodes):
        f = frames.reshape(len(frames), -1).astype(np.float32) / 255.0
        x = np.concatenate([f[1:], f[1:] - f[:-1]], 1)
        xs.append(x)
        ys.append(states[1:])
        groups.append(np.full(len(x), i))
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
    test = g % 4 == 3                                           # every fourth episode held out
    mu, sd = y[~test].mean(0), y[~test].std(0) + 1e-8
    y = (y - mu) / sd
    train = np.flatnonzero(~test)[::max(1, int((~test).sum()) // 2000)]   # ≤ ~2,000 rows fit the PCA
    xm = x[train].mean(0)
    centred = x[train] - xm
    # PCA through the Gram matrix (rows ≪ pixels): eigenvectors u of X Xᵀ give the components Xᵀu/σ.
    eigval, eigvec = np.linalg.eigh(centred @ centred.T)
    top = np.argsort(eigval)[::-1][:dims]
    basis = centred.T @ eigvec[:, top] / np.sqrt(np.maximum(eigval[top], 1e-12))
    z_train, z_test = (x[~test] - xm) @ basis, (x[test] - xm) @ basis
    w = np.linalg.solve(z_train.T @ z_train + ridge * np.eye(z_train.shape[1]), z_train.T @ y[~test])
    pred = z_test @ w
    resid = ((pred - y[test]) ** 2).sum(0)
    total = ((y[test] - y[test].mean(0)) ** 2).sum(0)
    return 1.0 - resid / np.maximum(total, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--tasks", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    args = parser.parse_args()
    rows = []
    for name in args.tasks:
        env_id, coords, variant = CANDIDATES[name]
        episodes = record(env_id, variant, args.episodes, args.max_steps)
        expert = np.concatenate([f for f, _, e in episodes if e == 0.0]).astype(np.float32)
        pixel_std = float(expert.std(0).mean())
        change = float(np.mean([np.abs(np.diff(f.astype(np.float32), axis=0)).mean()
                                for f, _, e in episodes if e == 0.0]))
        r2 = probe(episodes)
        rows.append([name, env_id, f"{pixel_std:.2f}", f"{change:.3f}",
                     ", ".join(f"{c} {v:.2f}" for c, v in zip(coords, r2)), f"{float(np.mean(r2)):.2f}",
                     sum(len(f) for f, _, _ in episodes)])
        print(rows[-1], flush=True)
    body = table(["task", "env", "expert per-pixel std (0-255)", "expert mean abs. frame change", "probe R² per coordinate",
                  "mean R²", "frames"], rows)
    body += (f"\n\n{args.episodes} episodes per task (ε ∈ {{0, 0.3, 0.6, 1}} in turn, seeds 0..), time limit "
             f"{args.max_steps}; the probe is fitted on three quarters of the episodes and scored on the rest.")
    write("pixel_task.md", "Pixel tasks: do 64×64 frames carry the state?", body)


if __name__ == "__main__":
    main()
