"""Linear layers inside a sequential loop, with their weight gradients computed once per
sequence instead of once per step.

A recurrent model applies the same weight ``W`` at every step t of a loop, ``y_t = x_t W``.
Autograd then computes ``x_tᵀ g_t`` (a product whose inner dimension is only the batch B)
and adds it into ``W``'s gradient at every step: T small products and T accumulations over a
full weight-sized buffer. The gradient is a sum over steps, ``Σ_t x_tᵀ g_t = Xᵀ G`` with X
and G the inputs and output gradients of all steps stacked, so it can be one product with
inner dimension B·T after the loop, which runs near the CPU's GEMM rate and splits well over
threads. Measured on the world model's training update (``rssm`` small, vector, B = T = 50,
1 thread): see ``benchmarks/results/world_model.md``.

How: :class:`StepTape` keeps the steps' inputs and, during the backward pass, their output
gradients. The loop starts from :meth:`StepTape.start`, an identity on the initial state
whose autograd node also owns the weights; every step output depends on that state, so
autograd runs that node last, after every step's backward, and it returns the weights'
gradients from the recorded inputs and gradients. The products of the forward pass and the
input gradients are the same as autograd's; only the order in which the weight gradient
sums its B·T terms changes (float32 rounding).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

Tensor = torch.Tensor


class _Start(torch.autograd.Function):
    """Identity on the loop's initial state; its backward returns the tape's weight gradients."""

    @staticmethod
    def forward(ctx, tape: "StepTape", n_state: int, *tensors: Tensor):
        ctx.tape = tape
        ctx.n_state = n_state
        return tuple(x.clone() for x in tensors[:n_state])

    @staticmethod
    def backward(ctx, *state_grads: Optional[Tensor]):
        return (None, None, *state_grads, *ctx.tape.parameter_grads())


class _StepLinear(torch.autograd.Function):
    """``base + x @ W`` of one step (``base``: a per-step input, the layer's bias, or None); the
    gradient of ``W`` (and of the bias) is left to the tape."""

    @staticmethod
    def forward(ctx, tape: "StepTape", layer: int, x: Tensor, add: Optional[Tensor]):
        weight, bias = tape.weights[layer], tape.biases[layer]
        base = add if add is not None else bias
        ctx.tape, ctx.layer = tape, layer
        ctx.slot = tape.record(layer, x)
        ctx.x_dtype = x.dtype
        ctx.has_add = add is not None
        x = x.to(weight.dtype)
        return torch.mm(x, weight) if base is None else torch.addmm(base.to(weight.dtype), x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        tape = ctx.tape
        tape.grads[ctx.layer][ctx.slot] = grad
        grad_x = None
        if ctx.needs_input_grad[2]:
            grad_x = torch.mm(grad, tape.weights[ctx.layer].t()).to(ctx.x_dtype)
        return None, None, grad_x, (grad if ctx.has_add else None)


class StepTape:
    """The linear layers of one pass through a sequential loop (see the module docstring).

    ``weights[i]`` is the ``(in, out)`` matrix the loop multiplies by (e.g. ``linear.weight.t()``,
    or its bf16 copy under autocast), ``biases[i]`` an ``(out,)`` bias or None. Use it only when
    gradients are being recorded; build a new tape for every pass.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]]):
        assert len(weights) == len(biases)
        self._params = [w for w in weights] + [b for b in biases if b is not None]
        self.weights = [w.detach() for w in weights]
        self.biases = [None if b is None else b.detach() for b in biases]
        self.inputs: list[list[Tensor]] = [[] for _ in weights]
        self.grads: list[list[Optional[Tensor]]] = [[] for _ in weights]

    def start(self, *state: Tensor) -> tuple[Tensor, ...]:
        """The loop's initial state, to be used instead of ``state`` (same values)."""
        return _Start.apply(self, len(state), *state, *self._params)

    def linear(self, layer: int, x: Tensor, add: Optional[Tensor] = None) -> Tensor:
        """``add + x @ weights[layer]``, or ``x @ weights[layer] + biases[layer]`` without ``add``
        (a layer has a bias or takes ``add``, not both): ``(B, in) -> (B, out)``."""
        assert add is None or self.biases[layer] is None, "a step layer takes a bias or an add"
        return _StepLinear.apply(self, layer, x, add)

    def record(self, layer: int, x: Tensor) -> int:
        self.inputs[layer].append(x.detach())
        self.grads[layer].append(None)
        return len(self.inputs[layer]) - 1

    def parameter_grads(self) -> list[Optional[Tensor]]:
        """``Xᵀ G`` per weight and ``Σ G`` per bias over every step that received a gradient
        (a step whose output did not reach the loss contributes nothing), in ``start``'s order."""
        weight_grads, bias_grads = [], []
        for layer, weight in enumerate(self.weights):
            steps = [i for i, g in enumerate(self.grads[layer]) if g is not None]
            grad_w = grad_b = None
            if steps:
                inputs = torch.cat([self.inputs[layer][i] for i in steps]).to(weight.dtype)  # (N, in)
                grads = torch.cat([self.grads[layer][i] for i in steps]).to(weight.dtype)    # (N, out)
                grad_w = torch.mm(inputs.t(), grads)                                          # (in, out)
                if self.biases[layer] is not None:
                    grad_b = grads.sum(0).to(self.biases[layer].dtype)
            weight_grads.append(grad_w)
            if self.biases[layer] is not None:
                bias_grads.append(grad_b)
        # The recorded inputs live as long as the graph (as autograd's saved tensors would), so
        # a graph kept with retain_graph=True can be differentiated again.
        return weight_grads + bias_grads


__all__ = ["StepTape"]
