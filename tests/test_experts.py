"""Scripted experts: valid actions and real task performance (full numbers: benchmarks/experts.py)."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

from wmil.data.experts import EXPERT_ENV_IDS, Expert, make_expert
from wmil.envs import EnvConfig, make_env
from wmil.errors import UserError

gym = pytest.importorskip("gymnasium")

needs_ale = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None, reason="ale-py not installed")
needs_robotics = pytest.mark.skipif(
    importlib.util.find_spec("gymnasium_robotics") is None, reason="gymnasium-robotics not installed"
)


def play(env_id: str, seed: int, max_steps: int | None = None, **config) -> tuple[float, dict, int]:
    """One expert episode; asserts every action is valid. Returns (return, last info, steps)."""
    env = make_env(EnvConfig(env_id, **config))
    expert = make_expert(env_id)
    obs, info = env.reset(seed=seed)
    expert.reset(np.random.default_rng(seed))
    total, steps = 0.0, 0
    while True:
        action = expert.act(info["state"])
        if isinstance(env.action_space, gym.spaces.Discrete):
            assert isinstance(action, int), type(action)
        else:
            assert isinstance(action, np.ndarray) and action.dtype == np.float32
        assert env.action_space.contains(action), action
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if terminated or truncated or (max_steps is not None and steps >= max_steps):
            break
    env.close()
    return total, info, steps


def test_registry_and_protocol():
    assert set(EXPERT_ENV_IDS) >= {
        "CartPole-v1", "LunarLander-v3", "Pendulum-v1", "FetchReach-v4", "FetchPush-v4",
        "FetchPickAndPlace-v4", "ALE/Pong-v5", "ALE/Breakout-v5",
    }
    for env_id in EXPERT_ENV_IDS:
        assert isinstance(make_expert(env_id), Expert)


def test_unknown_expert_is_one_line_user_error():
    with pytest.raises(UserError) as e:
        make_expert("Acrobot-v1")
    msg = str(e.value)
    assert "Acrobot-v1" in msg and "CartPole-v1" in msg and "\n" not in msg


@pytest.mark.parametrize("seed", [0, 1])
def test_cartpole_expert_reaches_500(seed):
    ret, _, _ = play("CartPole-v1", seed)
    assert ret == 500.0


def test_mountaincar_expert_reaches_the_flag_where_random_play_does_not():
    returns = [play("MountainCar-v0", s)[0] for s in range(4)]
    assert all(r > -150 for r in returns), returns   # the flag in under 150 steps, every episode
    env = make_env(EnvConfig("MountainCar-v0"))
    env.reset(seed=0)
    env.action_space.seed(0)
    total, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total, done = total + reward, terminated or truncated
    assert total == -200.0                      # a random policy runs out of time


def test_lunarlander_expert():
    returns = [play("LunarLander-v3", s)[0] for s in range(4)]
    assert np.mean(returns) >= 200, returns


def test_pendulum_expert():
    returns = [play("Pendulum-v1", s)[0] for s in range(5)]
    assert np.mean(returns) >= -200, returns


def test_cartpole_expert_on_pixels_uses_state():
    """Same expert, pixel observations: it acts on info['state'] and still balances."""
    ret, _, _ = play("CartPole-v1", 3, pixels=32, grayscale=True, max_episode_steps=60)
    assert ret == 60.0


@needs_robotics
@pytest.mark.parametrize(
    "env_id,seeds",
    [("FetchReach-v4", range(3)), ("FetchPush-v4", range(4)), ("FetchPickAndPlace-v4", range(4))],
)
def test_fetch_experts_succeed(env_id, seeds):
    successes = [play(env_id, s)[1]["is_success"] for s in seeds]
    assert np.mean(successes) >= 0.75, successes


@needs_robotics
@pytest.mark.parametrize("env_id", ["FetchPush-v4", "FetchPickAndPlace-v4"])
def test_fetch_experts_success_rate(env_id):
    successes = [play(env_id, s)[1]["is_success"] for s in range(20)]
    assert np.mean(successes) >= 0.95, successes


@needs_ale
@pytest.mark.parametrize("env_id", ["ALE/Pong-v5", "ALE/Breakout-v5"])
def test_ale_expert_actions_valid(env_id):
    _, info, steps = play(env_id, 0, max_steps=300)
    assert steps == 300 and info["state"].shape == (128,)


@needs_ale
def test_breakout_expert_serves_and_scores():
    """FIRE launches the ball: within 400 agent steps the expert must have broken bricks."""
    ret, _, _ = play("ALE/Breakout-v5", 0, max_steps=400)
    assert ret >= 5, ret


@needs_ale
def test_pong_expert_returns_the_ball():
    """The paddle tracker must score points, not just lose 0-21 (full quality: benchmark)."""
    env = make_env(EnvConfig("ALE/Pong-v5"))
    expert = make_expert("ALE/Pong-v5")
    obs, info = env.reset(seed=0)
    expert.reset(np.random.default_rng(0))
    won = 0
    for _ in range(1500):
        obs, r, term, trunc, info = env.step(expert.act(info["state"]))
        won += r > 0
        if term or trunc:
            break
    env.close()
    assert won >= 2, won


@needs_ale
@pytest.mark.slow
def test_ale_experts_full_games_slow():
    pong = [play("ALE/Pong-v5", s)[0] for s in range(3)]
    breakout = [play("ALE/Breakout-v5", s)[0] for s in range(3)]
    assert np.mean(pong) > 0, pong
    assert np.mean(breakout) >= 30, breakout


def test_experts_inside_sync_vector_env():
    """One expert per copy, fed the batched info['state']; reset per copy at episode start."""
    n = 2
    venv = gym.vector.SyncVectorEnv([functools.partial(make_env, EnvConfig("CartPole-v1", max_episode_steps=200))] * n)
    experts = [make_expert("CartPole-v1") for _ in range(n)]
    for i, e in enumerate(experts):
        e.reset(np.random.default_rng(i))
    obs, info = venv.reset(seed=0)
    total = np.zeros(n)
    finished = np.zeros(n, bool)
    for _ in range(200):
        actions = np.array([e.act(info["state"][i]) for i, e in enumerate(experts)])
        obs, r, term, trunc, info = venv.step(actions)
        total += r * ~finished
        finished |= term | trunc
        if finished.all():
            break
    venv.close()
    np.testing.assert_array_equal(total, [200.0, 200.0])
