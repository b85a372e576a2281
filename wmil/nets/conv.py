"""Convolutional encoder and decoder for 64x64 pixel observations (DreamerV2 layout).

Pixels arrive as uint8 ``(C, 64, 64)`` and are mapped to ``[-0.5, 0.5]`` inside the model by
:func:`preprocess_pixels`; the decoder predicts in that same space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmil.nets.mlp import activation
from wmil.precision import lowered_dtype

IMAGE_SIZE = 64


def preprocess_pixels(obs: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-0.5, 0.5] (any shape)."""
    # copy=True: never scale the caller's tensor in place when it is float32 already.
    return obs.to(torch.float32, copy=True).div_(255.0).sub_(0.5)


def postprocess_pixels(pred: torch.Tensor) -> torch.Tensor:
    """Model-space pixels in [-0.5, 0.5] -> uint8 in [0, 255] (clipped, any shape)."""
    return ((pred + 0.5).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _subpixel_weight(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A stride-2 transposed convolution's weight ``(Cin, Cout, k, k)`` as the weight of the
    ordinary convolution that computes its four output phases at once: ``(4·Cout, Cin, j, j)``
    with ``j = ⌈k/2⌉`` (an odd kernel is padded with a zero row and column), output channel
    ``4c + 2a + b`` holding the outputs at rows ≡ a, columns ≡ b (mod 2), as pixel_shuffle
    expects. Output row 2m + a sums input rows m − i times kernel row a + 2i, i < j, so each
    phase is a correlation with the kernel rows a, a + 2, … in reverse order."""
    cin, cout, k, _ = weight.shape
    if k % 2:
        weight = F.pad(weight, (0, 1, 0, 1))
        k += 1
    j = k // 2
    weight = weight.reshape(cin, cout, j, 2, j, 2).flip(2, 4).permute(1, 3, 5, 0, 2, 4)
    return weight.reshape(4 * cout, cin, j, j), j


class _TransposedConv2x(torch.autograd.Function):
    """A stride-2, unpadded transposed convolution: forward as four sub-pixel convolutions (one
    ordinary convolution with 4·Cout output channels, then pixel_shuffle), backward as the
    transposed convolution's own backward. The two are the same linear map. oneDNN's
    transposed-convolution forward is slow on this CPU where the output has few channels or
    the input map is tiny (the decoder's last layer: 1 channel; its first: a 5×5 input): e.g.
    64×64×1 from 30×30×16, N = 800, 1 thread: 214 ms in fp32 and 135 ms in bf16 against
    69 ms and 38 ms this way; its backward (an ordinary convolution of the output gradient)
    is fast, so it is kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias):  # (N, Cin, H, W) -> (N, Cout, 2H-2+k, …)
        k = weight.shape[-1]
        size = (2 * (x.shape[-2] - 1) + k, 2 * (x.shape[-1] - 1) + k)
        phase_weight, j = _subpixel_weight(weight)
        phase_bias = None if bias is None else bias.repeat_interleave(4)
        y = F.pixel_shuffle(F.conv2d(x, phase_weight, phase_bias, padding=j - 1), 2)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        # An odd kernel's padding row/column only reaches the last output row/column: cut it.
        return y[..., :size[0], :size[1]].contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=torch.channels_last), x, weight,
            [weight.shape[1]] if ctx.has_bias else None, [2, 2], [0, 0], [1, 1], True, [0, 0], 1, mask)
        return grad_x, grad_weight, grad_bias


def conv_transpose2x(x: torch.Tensor, layer: nn.ConvTranspose2d) -> torch.Tensor:
    """``layer(x)`` for a stride-2, unpadded, undilated ``nn.ConvTranspose2d``, computed as
    :class:`_TransposedConv2x` does (the same map; float32 rounding differs). Under bf16
    autocast the inputs are cast first, as autocast does for the layer itself."""
    assert layer.stride == (2, 2) and layer.padding == (0, 0) and layer.output_padding == (0, 0) \
        and layer.dilation == (1, 1) and layer.groups == 1, "conv_transpose2x: stride 2, no padding"
    weight, bias = layer.weight, layer.bias
    low = lowered_dtype(x.device.type)
    if low is not None:
        x, weight = x.to(low), weight.to(low)
        bias = None if bias is None else bias.to(low)
    return _TransposedConv2x.apply(x, weight, bias)


class ConvEncoder(nn.Module):
    """Four 4x4 stride-2 convolutions, depth x (1, 2, 4, 8) channels: 64 -> 31 -> 14 -> 6 -> 2.

    ``(N, C, 64, 64)`` float -> ``(N, 32 * depth)``. Leading dimensions beyond N are flattened
    and restored, so ``(B, T, C, 64, 64)`` works too. Runs in channels-last memory format,
    which oneDNN's CPU convolutions prefer (about 1.3-2x faster per layer here).
    """

    def __init__(self, channels: int, depth: int = 48, act: str = "elu"):
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for mult in (1, 2, 4, 8):
            layers += [nn.Conv2d(width, depth * mult, 4, stride=2),
                       activation(act, inplace=True)]
            width = depth * mult
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.channels = channels
        self.out_dim = depth * 8 * 2 * 2

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-3]
        assert obs.shape[-3:] == (self.channels, IMAGE_SIZE, IMAGE_SIZE), \
            f"ConvEncoder expects (..., {self.channels}, 64, 64), got {tuple(obs.shape)}"
        x = obs.reshape(-1, *obs.shape[-3:]).contiguous(memory_format=torch.channels_last)
        # Flatten in (C, H, W) order whatever the memory format.
        return self.net(x).contiguous().reshape(*lead, self.out_dim)


class ConvDecoder(nn.Module):
    """DreamerV2's decoder: linear to a (32 * depth)-channel 1x1 map, then transposed
    convolutions with kernels 5, 5, 6, 6 (stride 2): 1 -> 5 -> 13 -> 30 -> 64.
    ``(..., in_dim) -> (..., C, 64, 64)``.

    The first transposed convolution sees a 1x1 map, so it is computed as the linear layer it
    is (32·depth -> 4·depth·5·5; only its bias is per position rather than per channel); the
    others run in channels-last memory format, which oneDNN prefers, the first and last of
    them through :func:`conv_transpose2x` (the same layers, a faster forward).
    """

    def __init__(self, in_dim: int, channels: int, depth: int = 48, act: str = "elu"):
        super().__init__()
        self.linear = nn.Linear(in_dim, 32 * depth)
        self.first = nn.Linear(32 * depth, 4 * depth * 5 * 5)
        self.first_act = activation(act)
        layers: list[nn.Module] = []
        for width_in, width_out in ((4 * depth, 2 * depth), (2 * depth, depth)):
            layers += [nn.ConvTranspose2d(width_in, width_out, (5 if width_in == 4 * depth else 6),
                                          stride=2), activation(act, inplace=True)]
        layers.append(nn.ConvTranspose2d(depth, channels, 6, stride=2))
        self.net = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.channels = channels
        self.in_dim = in_dim
        self.depth = depth

    @property
    def output_bias(self) -> torch.Tensor:
        """``(C,)``: the per-channel bias of the last layer."""
        return self.net[-1].bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = self.first_act(self.first(self.linear(features.reshape(-1, self.in_dim))))
        x = x.reshape(x.shape[0], 4 * self.depth, 5, 5).contiguous(memory_format=torch.channels_last)
        last = len(self.net) - 1
        for i, layer in enumerate(self.net):
            # The middle transposed convolution is as fast as oneDNN's own forward: kept.
            x = conv_transpose2x(x, layer) if i in (0, last) else layer(x)
        x = x.contiguous()
        return x.reshape(*lead, self.channels, IMAGE_SIZE, IMAGE_SIZE)
