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


# ------------------------------------------------------------------------------ real-env worlds

#: Tiny real-environment tasks shared by the algorithm tests: (env id, discrete actions).
ENVS = {True: "CartPole-v1", False: "Pendulum-v1"}
WORLD_MODEL_TINY = {"log_every": "10", "eval_every": "10", "checkpoint_every": "10", "batch_size": "4",
                    "seq_len": "8", "open_loop_context": "3", "eval_batches": "1"}


class EnvWorld:
    """A recorded task: a mixed-quality world dataset, an expert dataset (3 episodes of the
    scripted expert, ≤ 25 steps) and tiny world models trained on the world data."""

    def __init__(self, root, discrete: bool):
        from wmil.data.build import BuildConfig, build_dataset

        self.root, self.discrete, self.env = root, discrete, ENVS[discrete]
        short = "cp" if discrete else "pd"
        common = dict(env=self.env, policy="expert", max_episode_steps=25, ref_episodes=0, ref_min_score=0.0,
                      ref_max_score=1.0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MINARI_DATASETS_PATH", str(self.datasets))
            self.world = build_dataset(BuildConfig(name=f"envs/{short}-world-v0", epsilon=[0.0, 0.5, 1.0], episodes=6,
                                                   seed=0, **common), progress=False)
            self.expert = build_dataset(BuildConfig(name=f"envs/{short}-expert-v0", episodes=3, seed=100, **common),
                                        progress=False)
        self._models = {}

    @property
    def datasets(self):
        return self.root / "minari"

    def model(self, name: str):
        """The run directory of a tiny world model ``name`` trained on the world data."""
        if name not in self._models:
            from wmil.train.world_model import train_world_model

            out = self.root / f"wm-{name}"
            train_world_model(self.world, model=name, preset="tiny", steps=10, out=out, device="cpu",
                              overrides=WORLD_MODEL_TINY, progress=False)
            self._models[name] = out
        return self._models[name]


@pytest.fixture(scope="session")
def env_worlds(tmp_path_factory):
    """``env_worlds(discrete)`` → the :class:`EnvWorld` of CartPole (discrete) or Pendulum
    (continuous), built once per session."""
    cache = {}

    def get(discrete: bool) -> EnvWorld:
        if discrete not in cache:
            cache[discrete] = EnvWorld(tmp_path_factory.mktemp("cp" if discrete else "pd"), discrete)
        return cache[discrete]

    return get


@pytest.fixture(scope="session")
def synthetic_worlds(tmp_path_factory):
    """``synthetic_worlds(model, discrete)`` → (world-model run dir, expert dataset, frozen world
    model): one tiny world model (1 update) on an expert whose action is a function of the
    observation (:func:`helpers.function_expert`), built once per session."""
    from helpers import function_expert

    from wmil.train.world_model import train_world_model

    root = tmp_path_factory.mktemp("synthetic")
    cache = {}

    def get(model, discrete):
        key = (model, discrete)
        if key not in cache:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
                kind = "disc" if discrete else "cont"
                dataset = function_expert(f"syn/{kind}-{model.replace('_', '-')}-v0", discrete, [10, 13, 8], seed=1)
                out = root / f"wm-{model}-{kind}"
                world_model = train_world_model(dataset, model=model, preset="tiny", out=out, steps=1, device="cpu",
                                                overrides={**WORLD_MODEL_TINY, "batch_size": "2", "seq_len": "6",
                                                           "open_loop_context": "2"}, progress=False)
            for parameter in world_model.parameters():
                parameter.requires_grad_(False)
            cache[key] = (out, dataset, world_model)
        return cache[key]

    return get


@pytest.fixture
def reach(minari_root):
    """(expert, world) datasets of a 2-D point reaching the origin (:func:`helpers.reach_episodes`)."""
    from helpers import ACT2, BOX2, reach_episodes, write_episodes

    expert = write_episodes("tt/reach-expert-v0", reach_episodes(8, 0), BOX2, ACT2)
    world = write_episodes("tt/reach-world-v0", reach_episodes(30, 1, epsilon=0.5), BOX2, ACT2)
    return expert, world
