"""Numeric precision of training: ``fp32`` or ``bf16`` autocast (DESIGN.md, Scale).

``bf16`` runs the matrix products and convolutions of the forward pass in bfloat16 through
:func:`torch.autocast` (CPU with AVX-512 BF16 or AMX, or CUDA), while parameters, optimiser
state and gradients stay float32. The parts where 8 mantissa bits are not enough are kept in
float32 by the models themselves, by casting at the boundary of each layer that feeds them
(see :func:`float32`): the recurrent state h, the LayerNorm of the GRU, latent logits and
samples, KL terms, reconstruction and head losses, log-probabilities, observation
standardisation. Autocast only ever lowers the inputs of the ops on its lists, so a float32
tensor handed to an elementwise op stays float32.

bf16 has float32's exponent range, so no loss scaling is needed (unlike fp16).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Optional

import torch

from wmil.errors import UserError, warn

PRECISIONS = ("fp32", "bf16")


def check_precision(value: str, field: str = "precision") -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a one-line UserError naming ``field``."""
    if value not in PRECISIONS:
        raise UserError(f"config field {field!r} is {value!r}; choose one of {list(PRECISIONS)}")
    return value


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The context to run a forward pass in: a no-op for ``fp32``, bfloat16 autocast on
    ``device``'s type (``cpu`` or ``cuda``) for ``bf16``."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def lowered_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast lowers matrix products to on ``device_type``, or None when autocast
    is off there (so a model can cast a weight once before a loop instead of every step)."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


#: CPU flags (Linux ``/proc/cpuinfo``) that give native bf16 matrix products.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> Optional[frozenset[str]]:
    """The first processor's flags from ``path``, or None where the file is absent (not
    Linux) or has no flags line."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_bf16(device: torch.device | str) -> Optional[bool]:
    """Whether ``device`` runs bf16 matrix products in hardware: on a CPU, whether it has
    AVX512-BF16 or AMX-BF16 (None when its flags cannot be read); on CUDA, whether the GPU
    supports bf16 without emulation."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # an older signature without the argument
            return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    return None if flags is None else any(flag in flags for flag in NATIVE_BF16_FLAGS)


def warn_if_emulated(device: torch.device | str, precision: str) -> bool:
    """Warn (one line) when ``bf16`` is asked for on a device without native bf16 products,
    where autocast emulates them: on a 2-core AMD EPYC with AVX2 only, a bf16 DITTO update ran
    at 0.83 updates/s against 5.47 in fp32 (``benchmarks.imagination``), 6.6× slower. True when
    it warned."""
    if precision != "bf16" or native_bf16(device) is not False:
        return False
    warn(f"--precision bf16 on {torch.device(device).type}: this processor has no native bf16 "
         f"matrix products ({' / '.join(NATIVE_BF16_FLAGS)} for a CPU), so they are emulated and run "
         "several times slower than fp32; use --precision fp32 here")
    return True


def float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32: the identity (same tensor, no graph node) when it already is, so
    fp32 runs are unchanged bit for bit; a differentiable upcast of a bf16 layer output."""
    return x if x.dtype == torch.float32 else x.float()


__all__ = ["PRECISIONS", "check_precision", "autocast", "lowered_dtype", "native_bf16", "warn_if_emulated",
           "float32"]
