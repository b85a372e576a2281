"""The closed-form Pendulum dynamics of ``benchmarks.pendulum_model_check``, against gymnasium's."""

import gymnasium as gym
import numpy as np
import torch

from benchmarks.pendulum_model_check import expert_swing_up, true_cost, true_rollout


def _angle(obs: torch.Tensor) -> torch.Tensor:
    return torch.atan2(obs[..., 1], obs[..., 0])


def test_true_rollout_steps_as_gymnasiums_pendulum():
    """Random torques (some beyond the ±2 bound, which both clip) from a reset state: the
    closed-form rollout follows Pendulum-v1 step for step."""
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=3)
    torques = np.random.default_rng(0).uniform(-3, 3, size=(40, 1, 1)).astype(np.float32)
    real = []
    for u in torques:
        obs, *_ = env.step(u[0])
        real.append(obs)
    predicted = true_rollout(torch.tensor(env.reset(seed=3)[0])[None], torch.from_numpy(torques))
    assert torch.allclose(predicted[:, 0], torch.tensor(np.stack(real)), atol=1e-4)


def test_the_expert_swings_up_from_rest_where_a_constant_push_cannot():
    """From hanging at rest the scripted expert's closed-loop torques reach within 0.5 rad of
    upright within 150 steps; a constant +2 N·m never lifts the pendulum past horizontal (the
    check's reading of a policy that holds +2)."""
    start = torch.tensor([[np.cos(np.pi - 0.05), np.sin(np.pi - 0.05), 0.0]], dtype=torch.float32)
    swing = true_rollout(start, expert_swing_up(start, 150))
    assert _angle(swing).abs().min() < 0.5
    push = true_rollout(start, torch.full((150, 1, 1), 2.0))
    assert (_angle(push).abs() > np.pi / 2).all()


def test_true_cost_is_the_negated_discounted_reward_of_gymnasiums_pendulum():
    """The cost world_report sets beside each imagined return: Pendulum-v1's own rewards of the
    same torques (clipped alike), negated and discounted."""
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=5)
    torques = np.random.default_rng(1).uniform(-3, 3, size=(30, 1, 1)).astype(np.float32)
    gamma, total = 0.9, 0.0
    for k, u in enumerate(torques):
        _, reward, *_ = env.step(u[0])
        total -= gamma ** k * reward
    cost = true_cost(torch.tensor(env.reset(seed=5)[0])[None], torch.from_numpy(torques), gamma)
    assert abs(float(cost[0]) - total) < 1e-3 * max(1.0, total)
