"""Return estimators for actor-critic learning in imagination (pure functions).

Time runs along dim 0: ``reward[k]`` is the reward for the transition from imagined state k
to k+1, ``value[k]`` the critic at state k (k = 0 … H), ``discount[k]`` the discount applied
to what follows state k+1 (γ times the model's continue probability, or just γ).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def lambda_return(reward: Tensor, value: Tensor, discount: Tensor, lam: float) -> Tensor:
    """TD(λ) targets (Sutton & Barto; the DITTO and Dreamer critics regress these).

    ``reward (H, B)``, ``value (H+1, B)``, ``discount (H, B)`` → ``(H, B)`` with

        G_k = r_k + d_k · ((1 − λ) · v_{k+1} + λ · G_{k+1}),   G_H = v_H.

    λ = 0 gives one-step TD targets, λ = 1 discounted Monte-Carlo returns bootstrapped at H.
    """
    assert reward.shape == discount.shape, f"reward {tuple(reward.shape)} vs discount {tuple(discount.shape)}"
    assert value.shape[0] == reward.shape[0] + 1 and value.shape[1:] == reward.shape[1:], \
        f"value must be (H+1, ...) for reward (H, ...); got {tuple(value.shape)} and {tuple(reward.shape)}"
    returns = []
    following = value[-1]
    for k in reversed(range(reward.shape[0])):
        following = reward[k] + discount[k] * ((1 - lam) * value[k + 1] + lam * following)
        returns.append(following)
    return torch.stack(returns[::-1])


def cumulative_discount(discount: Tensor) -> Tensor:
    """Weight of each imagined step in the objective: ``w_0 = 1``, ``w_k = Π_{j<k} d_j``.

    ``discount (H, B)`` → ``(H, B)``; stops gradients (the weights are not optimised).
    """
    ones = torch.ones_like(discount[:1])
    return torch.cumprod(torch.cat([ones, discount[:-1]], 0), 0).detach()


class ReturnNormalizer:
    """Scale returns by an EMA of their 5th–95th percentile range, never below 1 (DreamerV3).

    Keeps the actor's entropy bonus meaningful whatever the reward scale; state is two floats
    so it checkpoints trivially.
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        self.decay, self.low, self.high = decay, low, high
        self.range: float | None = None

    def update(self, returns: Tensor) -> float:
        flat = returns.detach().float().flatten()
        spread = float(torch.quantile(flat, self.high) - torch.quantile(flat, self.low))
        self.range = spread if self.range is None else self.decay * self.range + (1 - self.decay) * spread
        return self.scale

    @property
    def scale(self) -> float:
        return max(1.0, self.range or 0.0)

    def state_dict(self) -> dict:
        return {"range": self.range}

    def load_state_dict(self, state: dict) -> None:
        self.range = state["range"]
