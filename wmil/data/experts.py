"""Scripted experts: hand-written controllers that act on the privileged simulator state.

An expert sees ``info["state"]`` of the env made by :func:`wmil.envs.make_env` (see that
module for what the state holds per env family), never the learner's observation, so the same
expert drives vector and pixel versions of a task, and works inside gymnasium vector envs (one
expert per env copy; call :meth:`Expert.reset` at every episode start).

>>> from wmil.envs import EnvConfig, make_env
>>> env, expert = make_env(EnvConfig("CartPole-v1")), make_expert("CartPole-v1")
>>> obs, info = env.reset(seed=0); expert.reset(np.random.default_rng(0))
>>> obs, r, term, trunc, info = env.step(expert.act(info["state"]))

Returned actions are valid for the env's action space: a Python ``int`` for Discrete actions,
a float32 array inside the bounds for Box actions.

Measured quality (``benchmarks/experts.py``, seeds 0..19) is in ``benchmarks/results/experts.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from wmil.data.minatar_experts import MINATAR_EXPERTS
from wmil.errors import UserError

__all__ = ["Expert", "make_expert", "EXPERT_ENV_IDS"]


@runtime_checkable
class Expert(Protocol):
    """A scripted controller; one instance per env copy (it may keep per-episode memory)."""

    def reset(self, rng: np.random.Generator) -> None:
        """Called at each episode start (before the first ``act``)."""

    def act(self, state: np.ndarray) -> np.ndarray | int:
        """The action for ``state = info["state"]`` of the current step."""


# --------------------------------------------------------------------------------------------
# Classic control / Box2D
# --------------------------------------------------------------------------------------------


class CartPoleExpert:
    """Linear state feedback: push right iff ``k . (x, x_dot, theta, theta_dot) > 0``.

    The gains are LQR-like: the pole terms keep it upright, the small cart terms pull the cart
    back to the centre so it never drifts out of the +-2.4 track in 500 steps.
    """

    gains = np.array([0.5, 1.0, 10.0, 1.5])

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> int:
        return int(float(np.dot(self.gains, np.asarray(state, dtype=np.float64)[:4])) > 0.0)


class LunarLanderExpert:
    """gymnasium's own ``lunar_lander.heuristic`` (discrete actions)."""

    class _Discrete:  # stands in for the env: heuristic() only reads env.unwrapped.continuous
        continuous = False

        @property
        def unwrapped(self):
            return self

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> int:
        from gymnasium.envs.box2d.lunar_lander import heuristic

        return int(heuristic(self._Discrete(), np.asarray(state, dtype=np.float64)))


class MountainCarExpert:
    """Push the way the car is moving (pumping energy into the swing), right when at rest.

    State (position, velocity); actions 0 push left, 1 none, 2 push right. Reaches the flag in
    about 100-120 steps from gymnasium's starts (a random policy never does in 200).
    """

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> int:
        return 0 if float(np.asarray(state)[1]) < 0.0 else 2


class PendulumExpert:
    """Energy-based swing-up (bang-bang) with a discrete-time LQR balance near the top.

    Pendulum-v1 dynamics: ``w' = w + (a sin(th) + b u) dt`` with a = 3g/(2l) = 15, b = 3/(ml^2)
    = 3, dt = 0.05, ``th' = th + w' dt``, |u| <= 2. The energy ``E = w^2/2 + a (cos th - 1)``
    is 0 at the upright rest; far from the top the torque pumps or brakes energy at full force
    (``u = 2 sign(-E w)``), within 0.5 rad of the top an LQR (Q = diag(1, 0.1), R = 0.001, the
    reward's weights) takes over if its torque is not saturated far beyond the limit.
    """

    a, b, dt, max_torque = 15.0, 3.0, 0.05, 2.0
    switch_angle = 0.5

    def __init__(self) -> None:
        A = np.array([[1 + self.a * self.dt**2, self.dt], [self.a * self.dt, 1.0]])
        B = np.array([[self.b * self.dt**2], [self.b * self.dt]])
        Q, R = np.diag([1.0, 0.1]), np.array([[0.001]])
        P = Q.copy()
        for _ in range(1000):  # Riccati iteration; converges in far fewer steps
            K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
            P = Q + A.T @ P @ (A - B @ K)
        self.K = K[0]

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> np.ndarray:
        cos_th, sin_th, w = (float(v) for v in np.asarray(state, dtype=np.float64)[:3])
        th = math.atan2(sin_th, cos_th)
        u_lqr = -float(self.K[0] * th + self.K[1] * w)
        if abs(th) < self.switch_angle and abs(u_lqr) <= 1.5 * self.max_torque:
            u = u_lqr
        else:
            energy = 0.5 * w * w + self.a * (cos_th - 1.0)
            u = self.max_torque * (math.copysign(1.0, -energy * w) if abs(w) > 1e-6 else 1.0)
        return np.array([min(max(u, -self.max_torque), self.max_torque)], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Fetch (gymnasium-robotics). State = concat(observation, achieved_goal, desired_goal).
# observation (Push / PickAndPlace, 25): grip_pos 0:3, object_pos 3:6, object_rel_pos 6:9,
#   gripper_state 9:11 (finger joint positions), object_rot 11:14, object_velp 14:17,
#   object_velr 17:20, grip_velp 20:23, gripper_vel 23:25.
# observation (Reach, 10): grip_pos 0:3, gripper_state 3:5, grip_velp 5:8, gripper_vel 8:10.
# Action: (dx, dy, dz, gripper) in [-1, 1]; the mocap target moves by 0.05 * (dx, dy, dz) m;
# gripper > 0 opens, < 0 closes.
# --------------------------------------------------------------------------------------------


def _move(target: np.ndarray, pos: np.ndarray, gain: float = 10.0) -> np.ndarray:
    """Cartesian P-controller towards ``target`` (a clipped to [-1, 1])."""
    return np.clip(gain * (np.asarray(target) - np.asarray(pos)), -1.0, 1.0)


def _action(delta: np.ndarray, gripper: float) -> np.ndarray:
    return np.append(np.clip(delta, -1.0, 1.0), np.clip(gripper, -1.0, 1.0)).astype(np.float32)


class FetchReachExpert:
    """Move the gripper straight to the goal."""

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, dtype=np.float64)
        grip, goal = s[0:3], s[-3:]
        return _action(_move(goal, grip), 0.0)


class FetchPushExpert:
    """Push the block from behind along the block -> goal line.

    Each step: ``d`` = unit vector block -> goal (in the table plane). If the gripper is not
    behind the block on that line (lateral offset or wrong side), it goes to the "behind"
    point ``block - 0.06 d``, lifting over the block first when it would have to pass through
    it; once behind, it pushes towards ``goal - 0.045 d`` (so the block, not the gripper, ends
    on the goal) while steering to cancel lateral drift.
    """

    behind = 0.06
    contact = 0.045

    def __init__(self) -> None:
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, dtype=np.float64)
        grip, obj, goal = s[0:3], s[3:6], s[-3:]
        to_goal = goal[:2] - obj[:2]
        dist = float(np.linalg.norm(to_goal))
        if dist < 0.015:  # block on the goal: hold still
            return _action(np.zeros(3), -1.0)
        d = to_goal / dist
        rel = grip[:2] - obj[:2]
        along = float(np.dot(rel, d))  # < 0: gripper behind the block
        lateral = float(rel[0] * -d[1] + rel[1] * d[0])
        table_z = obj[2]
        behind_pt = np.array([*(obj[:2] - self.behind * d), table_z])
        if along < -0.03 and abs(lateral) < 0.015 and abs(grip[2] - table_z) < 0.02:
            # In position: push along the line, correcting the lateral error.
            target_xy = goal[:2] - self.contact * d
            push = target_xy - grip[:2]
            correction = -lateral * np.array([-d[1], d[0]]) * 2.0
            delta = np.zeros(3)
            delta[:2] = np.clip(10.0 * (push + correction), -1, 1)
            delta[2] = 10.0 * (table_z - grip[2])
            return _action(delta, -1.0)
        # Reposition behind the block.
        near_block = float(np.linalg.norm(rel)) < 0.08
        if near_block and along > -0.03:
            # Would touch the block on the way: go over it.
            hover = np.array([*behind_pt[:2], table_z + 0.08])
            if grip[2] < table_z + 0.06:
                return _action(np.array([0.0, 0.0, 1.0]), -1.0)
            return _action(_move(hover, grip), -1.0)
        if float(np.linalg.norm(grip[:2] - behind_pt[:2])) > 0.02:
            hover = np.array([*behind_pt[:2], max(grip[2], table_z)])
            return _action(_move(hover, grip), -1.0)
        return _action(_move(behind_pt, grip), -1.0)


class FetchPickAndPlaceExpert:
    """Open above the block, descend, close, carry to the goal.

    Phases (kept across steps, re-entered when the block slips out):
    0 approach: move above the block with the gripper open;
    1 descend: go down around the block, open;
    2 grasp: close for a few steps;
    3 carry: move the block to the goal with the gripper closed.
    """

    def __init__(self) -> None:
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        self.phase = 0
        self.grasp_steps = 0

    def act(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, dtype=np.float64)
        grip, obj, rel, goal = s[0:3], s[3:6], s[6:9], s[-3:]
        xy_err = float(np.linalg.norm(rel[:2]))
        if self.phase == 3 and float(np.linalg.norm(rel)) > 0.04:
            self.phase = 0  # dropped it
        if self.phase == 0:
            above = obj + np.array([0.0, 0.0, 0.06])
            if xy_err < 0.01 and abs(grip[2] - above[2]) < 0.03:
                self.phase = 1
            else:
                return _action(_move(above, grip), 1.0)
        if self.phase == 1:
            if xy_err > 0.02:
                self.phase = 0
                return _action(_move(obj + np.array([0, 0, 0.06]), grip), 1.0)
            if abs(rel[2]) < 0.01:
                self.phase = 2
                self.grasp_steps = 0
            else:
                return _action(_move(obj, grip), 1.0)
        if self.phase == 2:
            self.grasp_steps += 1
            if self.grasp_steps >= 3:
                self.phase = 3
            return _action(_move(obj, grip) * 0.0, -1.0)
        # carry
        return _action(_move(goal + (grip - obj), grip), -1.0)


# --------------------------------------------------------------------------------------------
# Atari (ale-py v5, AtariPreprocess frame skip 4). State = the 128-byte RAM (uint8).
# RAM addresses found by experiment (moving the paddle / watching the ball and comparing with
# the screen); coordinates are RAM units, which equal
# screen pixels up to a constant offset.
# --------------------------------------------------------------------------------------------


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold an unbounded 1-D ball coordinate back between two walls."""
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y < span else 2 * span - y)


class _PaddleTracker:
    """Shared logic of the Pong / Breakout experts: predict where the ball meets the paddle
    line (straight flight, wall bounces folded), then drive the paddle there.

    The paddles have momentum (an action moves them 9 to 23 units per agent step and they
    coast after release), so the controller compares the target with the paddle's projected
    rest position ``pos + damp * velocity`` and acts only outside a dead band ``th``: a plain
    bang-bang tracker oscillates by +-20 units and misses.
    """

    th: float = 8.0
    damp: float = 0.75

    def __init__(self) -> None:
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        self.prev_ball: tuple[int, int] | None = None
        self.prev_paddle: int | None = None
        self.t = 0

    def _drive(self, target: float, paddle: int, towards_high: int, towards_low: int) -> int:
        v = 0 if self.prev_paddle is None else paddle - self.prev_paddle
        self.prev_paddle = paddle
        err = target - (paddle + self.damp * v)
        if err > self.th:
            return towards_high
        if err < -self.th:
            return towards_low
        return 0  # NOOP


class PongExpert(_PaddleTracker):
    """Pong (actions NOOP, FIRE, RIGHT=up, LEFT=down) from RAM.

    RAM: 49 ball x (0 = no ball in play; the agent's paddle is met at x ~ 188), 54 ball y,
    51 agent (right, green) paddle y, 50 opponent paddle y, 13 / 14 opponent / agent score.
    Paddle and ball y share a scale: the ball is returned for ``ball_y - paddle_y`` in about
    [-2, 16]; the expert aims at ``ball_y - 8`` at the predicted contact, with dead band 10
    (hitting off-centre gives the steep returns the built-in player misses).
    """

    contact_x, y_lo, y_hi, aim = 188, 40, 200, 8.0
    th, damp = 10.0, 0.5

    def act(self, state: np.ndarray) -> int:
        ram = np.asarray(state)
        bx, by, paddle = int(ram[49]), int(ram[54]), int(ram[51])
        if bx == 0 or by == 0:  # between points: wait in the middle
            self.prev_ball = None
            return self._drive(120.0, paddle, 3, 2)
        y = float(by)
        if self.prev_ball is not None and self.prev_ball[0] != 0:
            dx, dy = bx - self.prev_ball[0], by - self.prev_ball[1]
            if dx > 0:  # coming towards us: predict the contact (walls folded)
                y = _reflect(by + dy * (self.contact_x - bx) / dx, self.y_lo, self.y_hi)
        self.prev_ball = (bx, by)
        return self._drive(y - self.aim, paddle, 3, 2)


class BreakoutExpert(_PaddleTracker):
    """Breakout (actions NOOP, FIRE, RIGHT, LEFT) from RAM.

    RAM: 99 ball x, 101 ball y (0 = no ball in play: press FIRE to serve, also after a lost
    life), 72 paddle x, 57 lives. The paddle is centred under the ball for
    ``paddle_x = ball_x - 9``; the paddle line is at ball y ~ 182; side walls at x ~ 57 / 199.
    FIRE alternates with NOOP so that a press registers even when the previous action was FIRE.
    """

    paddle_y, x_lo, x_hi, offset = 182, 57, 199, -9.0
    th, damp = 8.0, 0.75

    def act(self, state: np.ndarray) -> int:
        ram = np.asarray(state)
        bx, by, paddle = int(ram[99]), int(ram[101]), int(ram[72])
        if by == 0:
            self.prev_ball = None
            self.prev_paddle = paddle
            self.t += 1
            return 1 if self.t % 2 else 0
        x = float(bx)
        if self.prev_ball is not None:
            dx, dy = bx - self.prev_ball[0], by - self.prev_ball[1]
            if dy > 0:  # falling: predict where it reaches the paddle line
                x = _reflect(bx + dx * (self.paddle_y - by) / dy, self.x_lo, self.x_hi)
        self.prev_ball = (bx, by)
        return self._drive(x + self.offset, paddle, 2, 3)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_EXPERTS: dict[str, Callable[[], Expert]] = {
    "CartPole-v1": CartPoleExpert,
    "LunarLander-v3": LunarLanderExpert,
    "Pendulum-v1": PendulumExpert,
    "MountainCar-v0": MountainCarExpert,
    "FetchReach-v4": FetchReachExpert,
    "FetchPush-v4": FetchPushExpert,
    "FetchPickAndPlace-v4": FetchPickAndPlaceExpert,
    "ALE/Pong-v5": PongExpert,
    "ALE/Breakout-v5": BreakoutExpert,
}
_EXPERTS.update(MINATAR_EXPERTS)

EXPERT_ENV_IDS: tuple[str, ...] = tuple(_EXPERTS)


def make_expert(env_id: str) -> Expert:
    """A fresh scripted expert for ``env_id`` (one per env copy)."""
    try:
        factory = _EXPERTS[env_id]
    except (KeyError, TypeError):
        raise UserError(
            f"no scripted expert for {env_id!r}; experts exist for: {', '.join(EXPERT_ENV_IDS)}"
        ) from None
    return factory()
