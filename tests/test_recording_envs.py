"""Every supported environment records a dataset that Minari opens, with the right layout."""

import minari
import numpy as np
import pytest

from wmil.data.build import BuildConfig, build_dataset

# (env id, policy, pixels, expected observation shape, discrete)
CASES = [
    ("CartPole-v1", "expert", None, (4,), True),
    ("LunarLander-v3", "expert", None, (8,), True),
    ("Pendulum-v1", "expert", None, (3,), False),
    ("HalfCheetah-v5", "random", None, (17,), False),
    ("Hopper-v5", "random", None, (11,), False),
    ("FetchReach-v4", "expert", None, (13,), False),
    ("FetchPush-v4", "expert", None, (28,), False),
    ("FetchPickAndPlace-v4", "expert", None, (28,), False),
    ("ALE/Pong-v5", "expert", None, (1, 64, 64), True),
    ("ALE/Breakout-v5", "expert", None, (1, 64, 64), True),
]


@pytest.mark.parametrize("env_id, policy, pixels, obs_shape, discrete", CASES, ids=[c[0] for c in CASES])
def test_every_env_records_a_minari_dataset(env_id, policy, pixels, obs_shape, discrete):
    name = "envs/" + env_id.replace("/", "-").lower()
    ds = build_dataset(BuildConfig(name=name, env=env_id, policy=policy, epsilon=[0.1], episodes=2, workers=1,
                                   max_episode_steps=25, pixels=pixels, ref_episodes=0), progress=False)
    m = minari.load_dataset(ds.name)
    assert m.total_episodes == 2
    episode = next(m.iterate_episodes())
    assert episode.observations.shape[1:] == obs_shape
    assert len(episode.observations) == len(episode.actions) + 1 <= 26
    assert ds.spec.discrete == discrete
    if env_id.startswith("Fetch"):
        assert "is_success" in episode.infos and len(episode.infos["is_success"]) == len(episode.observations)
    batch = ds.sequences(2, 5, pad=True).sample()
    assert batch.obs.shape[2:] == obs_shape


def test_expert_workers_share_privileged_state_and_match_single_worker():
    """Experts read info['state'] through AsyncVectorEnv; episodes equal the 1-worker ones."""
    configs = [BuildConfig(name=f"envs/lunar{w}-v0", env="LunarLander-v3", policy="expert", epsilon=[0.2],
                           episodes=3, workers=w, max_episode_steps=60, ref_episodes=0) for w in (1, 2)]
    one, two = (build_dataset(c, progress=False) for c in configs)
    for i in range(3):
        np.testing.assert_array_equal(one.episode(i).actions, two.episode(i).actions)
        np.testing.assert_array_equal(one.episode(i).observations, two.episode(i).observations)


def test_lunar_lander_pixels_are_rendered():
    ds = build_dataset(BuildConfig(name="envs/lunar-pix-v0", env="LunarLander-v3", policy="expert", episodes=1,
                                   max_episode_steps=8, pixels=64, grayscale=True, ref_episodes=0), progress=False)
    obs = ds.episode(0).observations
    assert obs.shape == (9, 1, 64, 64) and obs.dtype == np.uint8 and obs.std() > 0


@pytest.mark.slow
def test_mujoco_pixels_through_osmesa():
    ds = build_dataset(BuildConfig(name="envs/hc-pix-v0", env="HalfCheetah-v5", policy="random", episodes=1,
                                   max_episode_steps=5, pixels=64, ref_episodes=0), progress=False)
    assert ds.episode(0).observations.shape == (6, 3, 64, 64)
