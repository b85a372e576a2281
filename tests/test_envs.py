"""wmil.envs.make_env: spaces, dtypes, goal flattening, privileged state, errors, vector envs."""

from __future__ import annotations

import ctypes.util
import functools
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from wmil.envs import EnvConfig, env_config_from_dict, make_env
from wmil.errors import UserError

gym = pytest.importorskip("gymnasium")

has_ale = importlib.util.find_spec("ale_py") is not None
has_robotics = importlib.util.find_spec("gymnasium_robotics") is not None
has_mujoco = importlib.util.find_spec("mujoco") is not None
has_osmesa = ctypes.util.find_library("OSMesa") is not None
needs_ale = pytest.mark.skipif(not has_ale, reason="ale-py not installed (pip install 'wmil[atari]')")
needs_robotics = pytest.mark.skipif(not has_robotics, reason="gymnasium-robotics not installed")
needs_mujoco = pytest.mark.skipif(not has_mujoco, reason="mujoco not installed")


def _roll(env, steps=5, seed=0):
    """Reset + a few random steps; checks obs in space and info['state'] each time."""
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    assert env.observation_space.contains(obs), (obs.shape, obs.dtype, env.observation_space)
    assert isinstance(info["state"], np.ndarray) and info["state"].ndim == 1
    infos = [info]
    for _ in range(steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert isinstance(info["state"], np.ndarray) and info["state"].ndim == 1
        infos.append(info)
        if term or trunc:
            obs, info = env.reset()
            assert "state" in info
    return obs, infos


VECTOR_ENVS = [
    ("CartPole-v1", 4, "discrete", None),
    ("LunarLander-v3", 8, "discrete", None),
    ("Pendulum-v1", 3, "box", None),
    pytest.param("HalfCheetah-v5", 17, "box", None, marks=needs_mujoco),
    pytest.param("Hopper-v5", 11, "box", None, marks=needs_mujoco),
]


@pytest.mark.parametrize("env_id,dim,kind,_", VECTOR_ENVS)
def test_vector_env_spaces(env_id, dim, kind, _):
    env = make_env(EnvConfig(env_id))
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32 and space.shape == (dim,)
    if kind == "discrete":
        assert isinstance(env.action_space, gym.spaces.Discrete)
    else:
        assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.dtype == np.float32
    obs, infos = _roll(env)
    assert obs.dtype == np.float32
    # The state is the raw observation: same values, before the float32 cast.
    np.testing.assert_allclose(infos[-1]["state"].astype(np.float32), obs, rtol=1e-6, atol=1e-6)
    env.close()


def test_mujoco_state_keeps_float64():
    pytest.importorskip("mujoco")
    env = make_env(EnvConfig("Hopper-v5"))
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and info["state"].dtype == np.float64
    env.close()


@needs_robotics
@pytest.mark.parametrize(
    "env_id,obs_dim", [("FetchReach-v4", 10), ("FetchPush-v4", 25), ("FetchPickAndPlace-v4", 25)]
)
def test_fetch_flattening_order_and_success(env_id, obs_dim):
    env = make_env(EnvConfig(env_id))
    assert env.observation_space.shape == (obs_dim + 3,) and env.observation_space.dtype == np.float32
    obs, info = env.reset(seed=3)
    raw = env.unwrapped._get_obs()  # the goal dict the simulator produces now
    # observation vector = concat(observation, desired_goal)
    np.testing.assert_allclose(obs[:obs_dim], raw["observation"].astype(np.float32))
    np.testing.assert_allclose(obs[obs_dim:], raw["desired_goal"].astype(np.float32))
    # state = concat(observation, achieved_goal, desired_goal), float64
    state = info["state"]
    assert state.shape == (obs_dim + 6,) and state.dtype == np.float64
    np.testing.assert_allclose(state[:obs_dim], raw["observation"])
    np.testing.assert_allclose(state[obs_dim : obs_dim + 3], raw["achieved_goal"])
    np.testing.assert_allclose(state[obs_dim + 3 :], raw["desired_goal"])
    assert isinstance(info["is_success"], float)
    for _ in range(3):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert isinstance(info["is_success"], float) and info["is_success"] in (0.0, 1.0)
        assert info["state"].shape == (obs_dim + 6,)
    env.close()


@needs_robotics
def test_fetch_success_flag_turns_on_at_goal():
    """Teleport-free check: move the gripper onto the goal and is_success must become 1."""
    env = make_env(EnvConfig("FetchReach-v4"))
    obs, info = env.reset(seed=0)
    for _ in range(30):
        s = info["state"]
        a = np.clip(10 * (s[-3:] - s[:3]), -1, 1)
        obs, r, term, trunc, info = env.step(np.append(a, 0).astype(np.float32))
    assert info["is_success"] == 1.0 and r == 0.0
    env.close()


@pytest.mark.parametrize("grayscale,channels", [(False, 3), (True, 1)])
def test_cartpole_pixels(grayscale, channels):
    env = make_env(EnvConfig("CartPole-v1", pixels=64, grayscale=grayscale))
    assert env.observation_space.shape == (channels, 64, 64) and env.observation_space.dtype == np.uint8
    obs, infos = _roll(env, steps=3)
    assert obs.shape == (channels, 64, 64) and obs.dtype == np.uint8
    assert obs.std() > 0  # an actual picture, not a blank frame
    assert infos[-1]["state"].shape == (4,)  # the expert still sees the vector state
    env.close()


def test_pendulum_pixels_other_size():
    env = make_env(EnvConfig("Pendulum-v1", pixels=32))
    obs, _ = _roll(env, steps=2)
    assert obs.shape == (3, 32, 32)
    env.close()


@needs_ale
@pytest.mark.parametrize(
    "config,shape",
    [
        (EnvConfig("ALE/Pong-v5"), (1, 64, 64)),
        (EnvConfig("ALE/Pong-v5", grayscale=False), (3, 64, 64)),
        (EnvConfig("ALE/Breakout-v5", pixels=48), (1, 48, 48)),
    ],
)
def test_ale_pixels_and_ram(config, shape):
    env = make_env(config)
    assert env.observation_space.shape == shape and env.observation_space.dtype == np.uint8
    assert isinstance(env.action_space, gym.spaces.Discrete)
    obs, infos = _roll(env, steps=4)
    assert obs.shape == shape and obs.dtype == np.uint8
    for info in infos:
        ram = info["state"]
        assert ram.shape == (128,) and ram.dtype == np.uint8
    np.testing.assert_array_equal(infos[-1]["state"], env.unwrapped.ale.getRAM())
    env.close()


@needs_ale
def test_ale_frame_skip_and_time_limit():
    env = make_env(EnvConfig("ALE/Breakout-v5", max_episode_steps=7))
    obs, info = env.reset(seed=0)
    f0 = info["frame_number"] if "frame_number" in info else None
    n = 0
    while True:
        obs, r, term, trunc, info = env.step(0)
        n += 1
        if term or trunc:
            break
    assert n == 7 and trunc
    if f0 is not None:
        assert info["frame_number"] - f0 == 4 * 7  # frame skip 4
    env.close()


def test_max_episode_steps_override():
    env = make_env(EnvConfig("Pendulum-v1", max_episode_steps=10))
    env.reset(seed=0)
    for t in range(10):
        *_, term, trunc, _ = env.step(env.action_space.sample())
    assert trunc
    env.close()


@needs_mujoco
@pytest.mark.skipif(not has_osmesa, reason="OSMesa missing: apt-get install libosmesa6")
def test_mujoco_pixels_in_subprocess():
    """MuJoCo pixels pick OSMesa by themselves; a vector MuJoCo env made first keeps working.

    Run in a fresh interpreter so the GL environment variables start unset.
    """
    code = (
        "import os, numpy as np\n"
        "os.environ.pop('MUJOCO_GL', None); os.environ.pop('PYOPENGL_PLATFORM', None)\n"
        "from wmil.envs import EnvConfig, make_env\n"
        "v = make_env(EnvConfig('Hopper-v5')); v.reset(seed=0); v.step(v.action_space.sample())\n"
        "e = make_env(EnvConfig('Hopper-v5', pixels=32))\n"
        "o, i = e.reset(seed=0); o, *_ = e.step(e.action_space.sample())\n"
        "assert o.shape == (3, 32, 32) and o.dtype == np.uint8 and o.std() > 0, o.shape\n"
        "assert i['state'].shape == (11,)\n"
        "o, *_ = v.step(v.action_space.sample()); assert o.shape == (11,)\n"
        "print('ok', os.environ['MUJOCO_GL'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok osmesa" in out.stdout


def test_unknown_id_is_user_error():
    with pytest.raises(UserError) as e:
        make_env(EnvConfig("CartPol-v1"))
    msg = str(e.value)
    assert "CartPol-v1" in msg and "CartPole-v1" in msg and "\n" not in msg
    with pytest.raises(UserError, match="LunarLander-v3"):
        make_env(EnvConfig("LunarLander-v2"))
    with pytest.raises(UserError, match="NoSuchGame"):
        make_env(EnvConfig("ALE/NoSuchGame-v5"))


def test_unsupported_spaces_are_user_errors():
    with pytest.raises(UserError, match="Discrete"):
        make_env(EnvConfig("FrozenLake-v1"))  # Discrete observations without pixels
    with pytest.raises(UserError, match="Tuple"):
        make_env(EnvConfig("Blackjack-v1"))


def test_bad_kwargs_are_user_errors():
    with pytest.raises(UserError, match="CartPole-v1"):
        make_env(EnvConfig("CartPole-v1", kwargs={"no_such_kwarg": 1}))
    with pytest.raises(UserError):
        EnvConfig("CartPole-v1", pixels=0)


def test_config_round_trip():
    cfg = EnvConfig("LunarLander-v3", pixels=64, grayscale=True, max_episode_steps=100,
                    kwargs={"continuous": False, "wind_power": 5.0})
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    again = env_config_from_dict(d)
    assert again == cfg and hash(again) == hash(cfg)
    assert env_config_from_dict({"env_id": "CartPole-v1"}) == EnvConfig("CartPole-v1")
    with pytest.raises(UserError, match="pixel"):
        env_config_from_dict({"env_id": "CartPole-v1", "pixel": 64})
    # kwargs given as pairs or a dict compare equal
    assert EnvConfig("X-v0", kwargs=(("b", 1), ("a", [1, 2]))) == EnvConfig("X-v0", kwargs={"a": [1, 2], "b": 1})


def test_import_is_cheap():
    code = (
        "import sys, wmil.envs\n"
        "bad = [m for m in ('gymnasium', 'ale_py', 'gymnasium_robotics', 'mujoco') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_classic_ids_do_not_import_optional_families():
    code = (
        "import sys\n"
        "from wmil.envs import EnvConfig, make_env\n"
        "make_env(EnvConfig('CartPole-v1')).reset(seed=0)\n"
        "print([m for m in ('ale_py', 'gymnasium_robotics') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    "config",
    [
        EnvConfig("CartPole-v1"),
        EnvConfig("CartPole-v1", pixels=32, grayscale=True),
        pytest.param(EnvConfig("FetchReach-v4"), marks=needs_robotics),
        pytest.param(EnvConfig("ALE/Pong-v5", pixels=32), marks=needs_ale),
    ],
    ids=["cartpole", "cartpole-pixels", "fetch", "pong"],
)
def test_sync_vector_env(config):
    venv = gym.vector.SyncVectorEnv([functools.partial(make_env, config)] * 2)
    obs, info = venv.reset(seed=[0, 1])
    assert obs.shape == (2, *venv.single_observation_space.shape)
    assert info["state"].shape[0] == 2
    for _ in range(3):
        obs, r, term, trunc, info = venv.step(venv.action_space.sample())
        assert info["state"].shape[0] == 2
    venv.close()


def test_async_vector_env_pickles_factory():
    config = EnvConfig("CartPole-v1", max_episode_steps=5)
    venv = gym.vector.AsyncVectorEnv([functools.partial(make_env, config)] * 2)
    try:
        obs, info = venv.reset(seed=0)
        assert obs.shape == (2, 4) and obs.dtype == np.float32 and info["state"].shape == (2, 4)
        for _ in range(6):
            obs, r, term, trunc, info = venv.step(np.array([0, 1]))
        assert "state" in info
    finally:
        venv.close()
