"""Shared fixtures: every test gets its own Minari dataset directory."""

import os

import numpy as np
import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# Tiny test models are dominated by per-op overhead: one thread is faster and avoids OpenMP
# spinning when the machine is shared. wmil.runs.resolve_device honours this.
os.environ.setdefault("WMIL_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["WMIL_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    """Point Minari (and so wmil) at a fresh dataset directory for each test."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def write_dataset():
    """Write a synthetic dataset whose values encode (episode, step) for alignment checks.

    Episode e has lengths[e] actions; obs[t] = [e, t, 0], action a[t] = t % n_actions (discrete)
    or [(e + t / 100) / 100] (continuous, inside the Box(-1, 1) action space), reward r[t] = 1000 e + t.
    """
    import gymnasium as gym

    from wmil.data.storage import DatasetWriter, Episode

    def write(name, lengths, discrete=True, terminal_last=True, n_actions=3):
        obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        act_space = gym.spaces.Discrete(n_actions) if discrete else gym.spaces.Box(-1, 1, (1,), np.float32)
        with DatasetWriter(name, obs_space, act_space) as writer:
            for e, T in enumerate(lengths):
                t = np.arange(T + 1, dtype=np.float32)
                obs = np.stack([np.full(T + 1, e, np.float32), t, np.zeros(T + 1, np.float32)], 1)
                if discrete:
                    actions = (np.arange(T) % n_actions).astype(np.int64)
                else:
                    actions = ((e + np.arange(T, dtype=np.float32) / 100) / 100)[:, None].astype(np.float32)
                terms = np.zeros(T, bool)
                truncs = np.zeros(T, bool)
                (terms if terminal_last else truncs)[-1] = True
                writer.add(Episode(obs, actions, 1000.0 * e + np.arange(T), terms, truncs, seed=e))
        from wmil.data import load

        return load(name)

    return write
