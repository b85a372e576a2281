"""Linear maps of inputs whose last columns are one-hot categorical samples.

An RSSM's stochastic state z is G categoricals of C classes, stored as G·C one-hot columns
(32 × 32 = 1,024 in the small preset, against 200 for h). A linear map of ``[h, z]`` then
multiplies mostly zeros: ``z Wᵀ`` is the sum of the G weight columns the sample picks. In
imagination that product runs at every step (the prior's input layer, the actor) and over the
whole rollout (critic and target critic), and it is most of a DITTO update's matrix products.
:func:`linear` computes it as that sum (``embedding_bag`` over the picked rows), and its
weight gradient by adding each row's output gradient into the G picked rows (with several
threads and at most :data:`DENSE_GRAD_ROWS` rows, the dense product, which is the faster there),
both exact up to float32 rounding (the order of the sums differs).

The picked columns come from the sampler (``State.index``, set where imagination draws z), or,
for a start state drawn elsewhere, from :func:`columns`, which reads them back only where the
values are exactly one-hot. On one thread of an AVX2 EPYC, at 32 × 32 latents and 200 outputs,
the product takes 0.11 ms against the dense 1.25 ms for 256 rows (1.6 against 18.9 ms for
3,840) and its weight gradient 0.67 against 1.16 ms (5.7 against 19.3).

The sparse path is taken only where it is the same function as ``layer(x)``: the input needs
no gradient (imagination's stop-gradient features, a frozen model's state), it runs on the CPU
(a GPU does the dense product at full rate) and autocast is off (under bf16 the dense product
is lowered; this path is float32). Otherwise, and with :data:`ENABLED` False, the layer runs as
usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from wmil.nets.reuse import derived

Tensor = torch.Tensor

#: Switch for the sparse path (the tests compare it with the dense one).
ENABLED = True

#: With more than one thread, a weight gradient of at most this many rows is the dense product
#: ``gradᵀ x`` (the one-hot columns included) rather than the per-categorical ``index_add``,
#: which runs on one thread: on two threads of an AVX2 EPYC, at 32 × 32 latents and 200
#: outputs, 0.9–1.2 against 2.0–2.4 ms for 256 rows (an imagined step's actor), 1.7–2.5 against
#: 2.2–2.9 ms for 512, and the other way from 1,024 rows (3.4–4.5 against 2.9–3.0 ms). On one
#: thread the ``index_add`` is the faster at every size (1.1 against 1.75 ms for 256 rows).
DENSE_GRAD_ROWS = 512


def _dense_weight_grad(rows: int) -> bool:
    return rows <= DENSE_GRAD_ROWS and torch.get_num_threads() > 1


@dataclass(frozen=True)
class OneHot:
    """The last ``width`` columns of an input are a one-hot block with a 1 at the columns
    ``index (..., G)`` (one per categorical, counted from the block's first column) and zeros
    elsewhere. Indexing selects along the input's leading dims (``onehot[:-1]``)."""

    index: Tensor
    width: int

    def __getitem__(self, item) -> OneHot:
        return OneHot(self.index[item], self.width)


def flat_index(classes_index: Tensor, classes: int) -> Tensor:
    """Each categorical's class ``(..., G)`` → its column in the one-hot block (class + C × group)."""
    groups = classes_index.shape[-1]
    return classes_index + torch.arange(groups, device=classes_index.device) * classes


def usable(x: Tensor) -> bool:
    """Whether :func:`linear` may take the sparse path for the input ``x``."""
    return (ENABLED and not x.requires_grad and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def columns(x: Tensor, classes: int) -> Optional[Tensor]:
    """The columns of the ones of ``x (..., G·C)`` where it is exactly one one-hot per
    categorical of ``classes`` classes (e.g. a posterior sample), else None; only where
    :func:`usable` (it reads ``x`` twice, a cost worth it only on the sparse path).

    Exact: every categorical's largest value is 1 and ``x`` has exactly one nonzero per
    categorical, so each categorical is that 1 and zeros."""
    if not usable(x) or x.shape[-1] % classes:
        return None
    values, index = x.unflatten(-1, (-1, classes)).max(-1)
    if not bool((values == 1).all()) or int(torch.count_nonzero(x)) != values.numel():
        return None
    return flat_index(index, classes)


def linear(layer: nn.Linear, x: Tensor, onehot: Optional[OneHot]) -> Tensor:
    """``layer(x)`` for ``x (..., in)`` described by ``onehot`` — without multiplying the block's
    zeros where :func:`usable`, else (and for ``onehot`` None) plainly ``layer(x)``."""
    if onehot is None or not usable(x):
        return layer(x)
    assert onehot.width <= x.shape[-1] == layer.in_features
    lead = x.shape[:-1]
    out = _OneHotLinear.apply(x.reshape(-1, x.shape[-1]), onehot.index.reshape(-1, onehot.index.shape[-1]),
                              layer.weight, layer.bias, _table(layer, onehot.width))
    return out.reshape(*lead, out.shape[-1])


def _table(layer: nn.Linear, width: int) -> Tensor:
    """The last ``width`` columns of ``layer.weight`` as rows ``(width, out)``, the layout the
    column sums read; transposed once per :func:`wmil.nets.reuse.unchanged_weights` block (an
    imagined rollout: 15 transposes of a 200 × 1,024 block become one)."""
    weight = layer.weight
    return derived(("onehot-table", weight.data_ptr(), width),
                   lambda: weight.detach()[:, weight.shape[1] - width:].t().contiguous())


class _OneHotLinear(torch.autograd.Function):
    """``x Wᵀ + b`` for ``x = [dense (N, D), one-hot (N, K)]`` with the one-hot part given by its
    picked columns ``index (N, G)``; gradients for W and b only (x needs none)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, weight: Tensor, bias: Optional[Tensor], table: Tensor) -> Tensor:
        width = table.shape[0]                                            # table (K, O): row k = column k of W
        dense = x.shape[1] - width
        out = F.embedding_bag(index, table, mode="sum")                   # (N, O): Σ of the picked rows
        if dense:
            out = torch.addmm(out, x[:, :dense], weight[:, :dense].t())
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(x, index)
        ctx.width, ctx.has_bias = width, bias is not None
        ctx.weight_shape = weight.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, index = ctx.saved_tensors
        grad = grad.contiguous()
        dense = x.shape[1] - ctx.width
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[2] and _dense_weight_grad(grad.shape[0]):
            grad_weight = torch.mm(grad.t(), x)
        elif ctx.needs_input_grad[2]:
            grad_weight = grad.new_empty(ctx.weight_shape)
            if dense:
                torch.mm(grad.t(), x[:, :dense], out=grad_weight[:, :dense])
            # Column k of W gets the sum of the output gradients of the rows that picked k: one
            # index_add per categorical into a (K, O) block, transposed into place.
            block = grad.new_zeros(ctx.width, grad.shape[1])
            for group in range(index.shape[1]):
                block.index_add_(0, index[:, group], grad)
            grad_weight[:, dense:] = block.t()
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.sum(0)
        assert not ctx.needs_input_grad[0], "the one-hot path is for inputs without gradients"
        return None, None, grad_weight, grad_bias, None
