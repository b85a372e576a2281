"""Optimiser steps and target networks: written once, used by every trainer."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

#: Called with an optimiser's parameters between backward and clipping (data-parallel runs set
#: it to average the gradients over the processes; see :func:`reducing_gradients`).
_reduce: Optional[Callable[[list[torch.Tensor]], None]] = None


@contextlib.contextmanager
def reducing_gradients(reduce: Optional[Callable[[list[torch.Tensor]], None]]) -> Iterator[None]:
    """Inside, every :func:`apply_gradients` passes the optimiser's parameters to ``reduce`` after
    the backward pass and before clipping (``wmil.distributed.Group.average_gradients``: the
    clip and the step then act on the gradient of the global batch, as in one process)."""
    global _reduce
    previous, _reduce = _reduce, reduce
    try:
        yield
    finally:
        _reduce = previous


def adam(params: Iterable[torch.Tensor], **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params`` with its fused kernel wherever every parameter allows
    it (floating point, on the CPU or a CUDA device). The update rule is Adam's as before; the
    fused kernel does each parameter's whole step in one pass instead of a dozen elementwise ops
    (``benchmarks/results/imagination.md``: on this 2-core CPU one step over GPRIL's ~2 M flow
    parameters takes 1.4 ms fused against 10.8 ms with torch's default, the for-loop kernel).
    A run saved before this resumes with the kernel it was saved with (the flag is part of the
    optimiser's saved parameter groups)."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.Adam(params, fused=fused, **kwargs)


def apply_gradients(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                    clip: Optional[float] = None) -> Optional[float]:
    """One step of ``optimizer`` on ``loss``: zero the gradients, backpropagate, clip the global
    gradient norm of the optimizer's parameters at ``clip`` (None: no clipping) and step.
    Returns the gradient norm before clipping (None without clipping)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if _reduce is not None:
        _reduce(_parameters(optimizer))
    norm = None
    if clip is not None:
        norm = float(nn.utils.clip_grad_norm_(_parameters(optimizer), clip))
    optimizer.step()
    return norm


def _parameters(optimizer: torch.optim.Optimizer) -> Iterable[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@torch.no_grad()
def update_target(target: nn.Module, source: nn.Module, step: int, every: int, tau: float) -> None:
    """Move a target network toward ``source`` after update number ``step`` (1, 2, …): a hard
    copy every ``every`` updates, or, with ``every`` = 0, Polyak averaging at rate ``tau``
    (θ̄ ← θ̄ + τ(θ − θ̄)) after every update."""
    if every > 0:
        if step % every == 0:
            target.load_state_dict(source.state_dict())
    else:
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)
