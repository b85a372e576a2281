"""Bring your own logged data: write (or take) a D4RL-style flat HDF5 file — observations,
actions, rewards, terminals, timeouts, one row per step — import it as a Minari dataset and
sample training windows from it."""

import gymnasium as gym
import h5py
import numpy as np

from common import options
from wmil.data.transfer import import_d4rl

args = options(__doc__)
args.out.mkdir(parents=True, exist_ok=True)
path = args.out / "pendulum-random.hdf5"
env, rows = gym.make("Pendulum-v1", max_episode_steps=50), {k: [] for k in ("observations", "actions", "rewards",
                                                                              "terminals", "timeouts")}
for episode in range(3 if args.tiny else 20):
    obs, _ = env.reset(seed=episode)
    for t in range(50):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(rows, (obs, action, reward, terminated, truncated)):
            rows[key].append(value)
        obs = next_obs
        if terminated or truncated:
            break
with h5py.File(path, "w") as f:
    for key, values in rows.items():
        f.create_dataset(key, data=np.asarray(values))

dataset = import_d4rl(path, "examples/pendulum-random-v0", overwrite=True)
print(dataset)
batch = dataset.sequences(batch_size=4, length=10, seed=0).sample()
print("a batch of windows:", {k: tuple(v.shape) for k, v in vars(batch).items() if v is not None})
