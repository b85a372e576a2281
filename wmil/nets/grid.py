"""Encoder and decoder for small grid images (MinAtar's 10×10×C object channels), and the choice
between them and the 64×64 conv nets by the observation's shape.

A 10×10 grid is too small for :class:`wmil.nets.ConvEncoder`'s four stride-2 convolutions
(64 → 2), and every cell matters (a ball is one cell). :class:`GridEncoder` keeps full
resolution in a first 3×3 convolution, halves it once in a second, and flattens;
:class:`GridDecoder` mirrors it. Inputs are in ``preprocess_pixels`` space ([-0.5, 0.5]).
"""

from __future__ import annotations

import torch
from torch import nn

from wmil.errors import UserError
from wmil.nets.conv import IMAGE_SIZE, ConvDecoder, ConvEncoder
from wmil.nets.mlp import activation

#: Largest side that the grid nets take; larger images must be 64×64 for the conv nets.
GRID_MAX = 32


def is_grid(shape: tuple[int, ...]) -> bool:
    """True for ``(C, H, W)`` image shapes that the grid nets handle (H, W ≤ :data:`GRID_MAX`)."""
    return len(shape) == 3 and max(shape[1:]) <= GRID_MAX


def check_image_shape(shape: tuple[int, ...]) -> None:
    """A one-line UserError for image shapes neither the grid nor the 64×64 conv nets take."""
    if len(shape) == 3 and not is_grid(shape) and tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"image observations {tuple(shape)}: wmil's image models take 64×64 images "
                        f"(record with --pixels 64) or small grids up to {GRID_MAX}×{GRID_MAX} (MinAtar)")


class GridEncoder(nn.Module):
    """``(..., C, H, W)`` -> ``(..., 2·depth·⌈H/2⌉·⌈W/2⌉)``: 3×3 conv (depth, stride 1), 3×3 conv
    (2·depth, stride 2), flatten. 10×10 with depth 16: 32·5·5 = 800 features."""

    def __init__(self, shape: tuple[int, int, int], depth: int = 16, act: str = "elu"):
        super().__init__()
        C, H, W = shape
        self.shape = (C, H, W)
        self.net = nn.Sequential(
            nn.Conv2d(C, depth, 3, padding=1), activation(act, inplace=True),
            nn.Conv2d(depth, 2 * depth, 3, stride=2, padding=1), activation(act, inplace=True),
        )
        self.reduced = ((H + 1) // 2, (W + 1) // 2)
        self.out_dim = 2 * depth * self.reduced[0] * self.reduced[1]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-3]
        assert tuple(obs.shape[-3:]) == self.shape, \
            f"GridEncoder expects (..., {self.shape}), got {tuple(obs.shape)}"
        return self.net(obs.reshape(-1, *self.shape)).reshape(*lead, self.out_dim)


class GridDecoder(nn.Module):
    """``(..., in_dim)`` -> ``(..., C, H, W)``: linear to a 2·depth × ⌈H/2⌉ × ⌈W/2⌉ map, a 4×4
    transposed convolution (stride 2) to depth × H × W (cropped for odd sizes), a 3×3 conv to C
    channels. Outputs are unbounded: means (Gaussian likelihood) or logits (Bernoulli)."""

    def __init__(self, in_dim: int, shape: tuple[int, int, int], depth: int = 16, act: str = "elu"):
        super().__init__()
        C, H, W = shape
        self.shape = (C, H, W)
        self.in_dim = in_dim
        self.reduced = ((H + 1) // 2, (W + 1) // 2)
        self.depth = depth
        self.linear = nn.Linear(in_dim, 2 * depth * self.reduced[0] * self.reduced[1])
        self.net = nn.Sequential(
            activation(act, inplace=True),
            nn.ConvTranspose2d(2 * depth, depth, 4, stride=2, padding=1), activation(act, inplace=True),
        )
        self.out = nn.Conv2d(depth, C, 3, padding=1)

    @property
    def output_bias(self) -> torch.Tensor:
        """``(C,)``: the per-channel bias of the last layer."""
        return self.out.bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = self.linear(features.reshape(-1, self.in_dim))
        x = self.net(x.reshape(-1, 2 * self.depth, *self.reduced))
        C, H, W = self.shape
        x = self.out(x[..., :H, :W])
        return x.reshape(*lead, C, H, W)


def image_encoder(shape: tuple[int, int, int], depth: int, act: str) -> nn.Module:
    """The encoder for images of ``shape``: :class:`GridEncoder` for small grids, else the
    64×64 :class:`ConvEncoder`."""
    check_image_shape(shape)
    return GridEncoder(shape, depth, act) if is_grid(shape) else ConvEncoder(shape[0], depth, act)


def image_decoder(in_dim: int, shape: tuple[int, int, int], depth: int, act: str) -> nn.Module:
    """The decoder mirroring :func:`image_encoder`."""
    check_image_shape(shape)
    return GridDecoder(in_dim, shape, depth, act) if is_grid(shape) else ConvDecoder(in_dim, shape[0], depth, act)


__all__ = ["GRID_MAX", "GridDecoder", "GridEncoder", "check_image_shape", "image_decoder", "image_encoder", "is_grid"]
