"""Scripted experts for MinAtar Breakout, SpaceInvaders and Asterix.

Each reads the game's privileged state (``info["state"]``, layout in
:data:`wmil.envs.minatar.STATE_LAYOUTS`), rebuilds the game with
:func:`wmil.envs.minatar.restore_game` and simulates it ahead, as the Atari experts read the
console RAM. Actions are indices into the ``-v1`` minimal action sets. Sticky actions (the
previous action repeats with probability 0.1) are not modelled by the lookahead; each expert
re-plans every step, which corrects a repeated move a step later.

Measured returns against a random policy: ``python -m benchmarks.minatar experts``
(``benchmarks/results/minatar-experts.md``).
"""

from __future__ import annotations

import copy

import numpy as np

from wmil.envs.minatar import restore_game

# The game's own action codes (its ``action_map`` 'n','l','u','r','d','f') and the -v1 indices.
NOOP, LEFT, UP, RIGHT, DOWN, FIRE = range(6)


class BreakoutExpert:
    """Follow the ball's predicted landing column (minimal actions: noop, left, right).

    The ball moves diagonally one cell a step. A copy of the game run with the paddle off the
    board gives the two columns where a paddle returns it when it reaches the bottom row: the
    ball's column before its last move (bounced straight back) and the column it lands in (also
    reversed sideways). The paddle heads, one cell a step, for the one of the two nearer to the
    ball's present column, and waits there. Measured over 20 episodes of 1,000 steps (seeds
    0-19, see ``benchmarks/results/minatar-experts.md``): this rule breaks 77 bricks; taking the
    column nearer to the paddle never loses the ball but sends it back along its own path
    through cleared cells (35 bricks); a search for the column whose return breaks the most
    bricks before the next landing scored 66.
    """

    actions = {NOOP: 0, LEFT: 1, RIGHT: 2}

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> int:
        game = restore_game("breakout", state)
        pos = game.pos
        target = self._landing(game)
        if target == pos:
            return self.actions[NOOP]
        return self.actions[LEFT if target < pos else RIGHT]

    @staticmethod
    def _landing(game) -> int:
        """The catch column nearer to the ball's present column."""
        ball = game.ball_x
        game.pos = -10  # nothing can be caught: the copy runs until the ball reaches the bottom row
        for _ in range(200):
            _, terminal = game.act(NOOP)
            if terminal:
                break
        else:
            return ball
        # Caught where the ball was before its last move, or where it lands.
        return game.last_x if abs(game.last_x - ball) <= abs(game.ball_x - ball) else game.ball_x


class SpaceInvadersExpert:
    """Dodge enemy bullets, intercept aliens, lowest first.

    Minimal actions: noop, left, right, fire. Every step: the columns the cannon may stand in
    next are those no enemy bullet reaches within four steps. For each column the expert
    simulates (on a copy of the game, enemy bullets removed) walking there, waiting for the gun
    to cool down and firing; among the columns where that shot kills an alien it heads for the
    one that is quick to reach and kills a low alien, and fires when it stands there with the gun
    ready. Aliens move faster as they thin out (the last one a cell every step) and end the game
    when they reach the bottom row, so the intercept is planned rather than chased (measured:
    firing only from where a shot hits *now* lost the last alien of a wave in 11 of 12 deaths).
    """

    actions = {NOOP: 0, LEFT: 1, RIGHT: 2, FIRE: 3}
    horizon = 12

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> int:
        game = restore_game("space_invaders", state)
        pos = game.pos
        safe = {x: self._safe(game, x) for x in (pos - 1, pos, pos + 1) if 0 <= x <= 9}
        plans = self._intercepts(game)
        if pos in plans and plans[pos][1] == 0 and safe.get(pos, False):
            return self.actions[FIRE]
        if plans:
            # Quick to reach and low first (a row lower is worth two steps of walking).
            target = min(plans, key=lambda x: (plans[x][1] - 2 * plans[x][0], x))
        else:  # nothing to hit yet: stay under the lowest aliens
            cols = np.flatnonzero(game.alien_map.any(0))
            target = int(cols[np.argmin(np.abs(cols - pos))]) if len(cols) else pos
        step = int(np.sign(target - pos))
        preferred = [pos + step, pos, pos - step] if step else [pos, pos - 1, pos + 1]
        for x in preferred:
            if safe.get(x, False):
                return self.actions[NOOP if x == pos else (LEFT if x < pos else RIGHT)]
        return self.actions[NOOP]

    @staticmethod
    def _safe(game, x: int) -> bool:
        """No enemy bullet reaches the bottom row at column ``x`` within four steps, and no alien
        is there: a margin of three chances to step aside, since a sticky action can repeat
        (measured: with a two-step margin, two sticky repeats in a row killed the cannon in 3 of
        5 episodes)."""
        return not (game.e_bullet_map[5:9, x].any() or game.alien_map[9, x])

    def _intercepts(self, game) -> dict[int, tuple[int, int]]:
        """Column -> (row of the alien hit, steps before firing) for the columns from which a
        shot, fired as soon as the cannon is there and the gun is ready, meets an alien.

        The aliens' motion does not depend on the cannon, so one simulated copy (enemy bullets
        removed) gives the alien map after each of the next steps; a shot fired at step w from
        column x is in row 8 - k after step w + k (the game moves a new shot up one row in the
        step it is fired), and hits where an alien is then."""
        sim = copy.copy(game)  # act() reassigns or copies its maps, except in place on these:
        sim.alien_map, sim.f_bullet_map = game.alien_map.copy(), game.f_bullet_map.copy()
        sim.e_bullet_map = np.zeros_like(game.e_bullet_map)
        sim.alien_shot_timer = 10 ** 6
        aliens = []
        for _ in range(self.horizon + 10):
            sim.act(NOOP)
            sim.terminal = False  # keep the aliens moving whatever happens to the cannon
            aliens.append(sim.alien_map.astype(bool))
        out = {}
        for x in range(10):
            wait = max(abs(x - game.pos), game.shot_timer)
            for k in range(9):
                if wait + k >= len(aliens):
                    break
                if aliens[wait + k][8 - k, x]:
                    out[x] = (8 - k, wait)
                    break
        return out


class AsterixExpert:
    """Collect gold, avoid enemies: dynamic programming over the next ``horizon`` steps.

    Minimal actions: noop, left, up, right, down. Until the next spawn the entities' motion does
    not depend on the player, so one simulated copy of the game (player off the board) gives
    every entity's cell after each of the next steps. At step t a cell is deadly when an enemy is
    there before or after the entities move (the game checks both), and pays 1 when gold is.
    Backward induction over (cell, the action executed last) then picks the action with the best
    expected value, counting the sticky repeat of the last action (probability 0.1); dying costs
    ``death`` and gold later counts ``discount`` less.
    """

    actions = {NOOP: 0, LEFT: 1, UP: 2, RIGHT: 3, DOWN: 4}
    moves = (NOOP, LEFT, UP, RIGHT, DOWN)
    horizon = 10
    discount = 0.95
    death = -20.0
    sticky = 0.1

    def __init__(self) -> None:
        # dest[m] = flat index (y, x) of the cell reached from each cell by move m (rows 1..8 -> 0..7).
        ys, xs = np.meshgrid(np.arange(8), np.arange(10), indexing="ij")
        shifts = {NOOP: (0, 0), LEFT: (0, -1), UP: (-1, 0), RIGHT: (0, 1), DOWN: (1, 0)}
        self.dest = np.stack([(np.clip(ys + shifts[m][0], 0, 7) * 10 + np.clip(xs + shifts[m][1], 0, 9)).reshape(-1)
                              for m in self.moves])                                     # (5, 80)
        self.last = 0  # index into self.moves of the action taken last

    def reset(self, rng: np.random.Generator) -> None:
        self.last = 0

    def act(self, state: np.ndarray) -> int:
        game = restore_game("asterix", state)
        risk, gold = self._forecast(game)                                               # (H, 80) each
        value = np.zeros((len(self.moves), 80))                                         # V(last, cell)
        for t in range(self.horizon - 1, -1, -1):
            # W[e, cell]: executing move e from cell at step t, then acting optimally.
            landing = self.dest                                                         # (5, 80)
            p = risk[t][landing]
            outcome = p * self.death + (1 - p) * (
                gold[t][landing] + self.discount * value[np.arange(len(self.moves))[:, None], landing])
            q = (1 - self.sticky) * outcome[:, None, :] + self.sticky * outcome[None, :, :]  # (a, last, cell)
            value = q.max(0)
        cell = (game.player_y - 1) * 10 + game.player_x
        q_now = q[:, self.last, cell]
        choice = int(np.argmax(q_now + 1e-6 * (np.arange(len(self.moves)) == 0)))  # ties: stay
        self.last = choice
        return self.actions[self.moves[choice]]

    def _forecast(self, game) -> tuple[np.ndarray, np.ndarray]:
        """(risk, gold): ``(horizon, 80)`` over cells (rows 1..8) for steps 1..H. Risk is 1 where
        a known enemy is; at the next spawn a new entity appears at either edge of a free row
        (an enemy with probability 2/3), so those cells and their paths get that chance."""
        sim = _clone_asterix(game)
        sim.player_x, sim.player_y = -100, -100     # never collides: entity motion only
        sim.spawn_timer = 10 ** 6                   # spawns are added below, as phantoms
        sim.ramping = False
        risk = np.zeros((self.horizon, 80))
        gold = np.zeros((self.horizon, 80))
        before = self._cells(sim)
        for t in range(self.horizon):
            if t == game.spawn_timer:
                free = [i for i, e in enumerate(sim.entities) if e is None]
                chance = (2 / 3) / (2 * max(len(free), 1))
                sim.entities += [[x, i + 1, x == 0, False, chance] for i in free for x in (0, 9)]
                before = self._cells(sim)
            sim.act(NOOP)
            after = self._cells(sim)
            for cells in (before, after):
                for cell, p_enemy, p_gold in cells:
                    risk[t, cell] = max(risk[t, cell], p_enemy)
                    gold[t, cell] = max(gold[t, cell], p_gold)
            before = after
        return risk, gold

    @staticmethod
    def _cells(game) -> list[tuple[int, float, float]]:
        """(cell, chance of an enemy, gold) of every entity on the board."""
        out = []
        for e in game.entities:
            if e is not None and 0 <= e[0] <= 9:
                chance = e[4] if len(e) > 4 else 1.0
                out.append(((e[1] - 1) * 10 + e[0], 0.0 if e[3] else chance, 1.0 if e[3] else 0.0))
        return out


def _clone_asterix(game):
    """A copy of an Asterix game (cheaper than deepcopy: only the entity lists are mutable)."""
    sim = copy.copy(game)
    sim.entities = [None if e is None else list(e) for e in game.entities]
    return sim


#: env id -> expert class, added to wmil.data.experts' registry.
MINATAR_EXPERTS = {
    "MinAtar/Breakout-v1": BreakoutExpert,
    "MinAtar/SpaceInvaders-v1": SpaceInvadersExpert,
    "MinAtar/Asterix-v1": AsterixExpert,
}
