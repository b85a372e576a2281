"""Fully connected building blocks: activations, MLPs and the LayerNorm GRU cell."""

from __future__ import annotations

import typing
from typing import Optional

import torch
from torch import nn

from wmil.config import Activation
from wmil.nets.onehot import OneHot, linear
from wmil.precision import float32

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}
assert tuple(ACTIVATIONS) == typing.get_args(Activation), "wmil.config.Activation lists the activations"


def activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module called ``name`` (one of ``ACTIVATIONS``); ``inplace`` where the
    module supports it (saves a pass over large conv feature maps)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    if inplace and name in ("elu", "relu", "silu"):
        return ACTIVATIONS[name](inplace=True)
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """``layers`` hidden layers of ``units`` (Linear [+ LayerNorm] + activation), then a linear
    output layer of ``out_dim`` (omitted when ``out_dim`` is None, so the output is the last
    hidden layer). Works on any leading shape ``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int | None, layers: int, units: int,
                 act: str = "elu", norm: bool = False):
        super().__init__()
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            # LayerNorm carries its own bias, so the linear one would be redundant.
            modules.append(nn.Linear(width, units, bias=not norm))
            if norm:
                modules.append(nn.LayerNorm(units))
            modules.append(activation(act))
            width = units
        if out_dim is not None:
            modules.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*modules)
        self.in_dim = in_dim
        self.out_dim = width
        #: Whether the output is a head's (float32 under bf16 autocast) or a trunk's (left lowered).
        self.head = out_dim is not None

    def forward(self, x: torch.Tensor, onehot: Optional[OneHot] = None) -> torch.Tensor:
        """``(..., in_dim) -> (..., out_dim)``; ``onehot``: where ``x`` ends in one-hot samples,
        their columns, so the first layer sums weight columns instead of multiplying zeros
        (:mod:`wmil.nets.onehot`; the same function)."""
        # A head's output (logits, values, means, discriminator scores) is float32 under bf16
        # autocast, so log-probabilities, returns and losses downstream are computed in float32;
        # a trunk (out_dim None) hands its lowered output to the next matrix product as it is.
        if onehot is None:
            out = self.net(x)
        else:
            out = linear(self.net[0], x, onehot)
            for module in self.net[1:]:
                out = module(out)
        return float32(out) if self.head else out


class LayerNormGRUCell(nn.Module):
    """The GRU cell of DreamerV2 (``GRUCell`` with ``norm=True``, ``update_bias=-1``).

    One fused linear map of ``[x, h]`` to the reset, update and candidate pre-activations,
    LayerNorm over all three, then::

        reset  = sigmoid(r)
        update = sigmoid(u - 1)          # biased towards keeping the old state
        cand   = tanh(reset * c)
        h'     = lerp(h, cand, update)   # update * cand + (1 - update) * h

    Kept to a handful of kernels because it runs once per time step of the sequential loop.
    """

    def __init__(self, input_dim: int, hidden_dim: int, update_bias: float = -1.0):
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        # Bias-free: the LayerNorm's bias plays that role.
        self.linear = nn.Linear(input_dim + hidden_dim, 3 * hidden_dim, bias=False)
        self.norm = nn.LayerNorm(3 * hidden_dim)
        offset = torch.zeros(2 * hidden_dim)
        offset[hidden_dim:] = update_bias
        self.register_buffer("gate_offset", offset, persistent=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # x (B, input_dim), h (B, hidden_dim) -> (B, hidden_dim)
        return self.from_linear(self.linear(self.linear_input(x, h)), h)

    @staticmethod
    def linear_input(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``[x, h]``, the input of the fused linear map: ``(B, input_dim + hidden_dim)``.
        Under bf16 autocast h joins x's dtype (rather than the concatenation being promoted to
        float32 and cast back for the product)."""
        return torch.cat([x, h.to(x.dtype)], -1)

    def from_linear(self, linear_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The cell after its linear map, for loops that compute ``linear_out = [x, h] Wᵀ``
        ``(B, 3 * hidden_dim)`` themselves (:mod:`wmil.nets.step_linear`); ``-> (B, hidden_dim)``."""
        # The LayerNorm, the gates and the recurrent state stay float32 under bf16 autocast:
        # h is carried through every step of the sequence.
        parts = self.norm(float32(linear_out))
        size = self.hidden_dim
        gates = torch.sigmoid(parts[..., : 2 * size] + self.gate_offset)
        reset, update = gates[..., :size], gates[..., size:]
        cand = torch.tanh(reset * parts[..., 2 * size:])
        return torch.lerp(h, cand, update)
