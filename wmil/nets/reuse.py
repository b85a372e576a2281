"""Derived copies of weights (a transpose, a bf16 cast) made once per block of code in which
the weights do not change, such as an imagined rollout, where the actor and the world model
serve every step.

A version counter could not tell when such a copy is stale: torch's fused Adam steps weights
in place without bumping it. So nothing is kept past the block: inside :func:`unchanged_weights`
:func:`derived` makes each copy once; outside it makes a fresh one at every call.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Optional

import torch

_CACHE: Optional[dict] = None


@contextlib.contextmanager
def unchanged_weights():
    """Declare that no weight changes inside the block (nested blocks share the outer one's
    copies)."""
    global _CACHE
    outer = _CACHE
    _CACHE = {} if outer is None else outer
    try:
        yield
    finally:
        _CACHE = outer


def derived(key: Hashable, make: Callable[[], torch.Tensor]):
    """``make()``, made once per :func:`unchanged_weights` block for ``key`` (name the weights
    by ``data_ptr`` and the kind of copy)."""
    if _CACHE is None:
        return make()
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]
