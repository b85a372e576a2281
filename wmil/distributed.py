"""Data-parallel training under ``torchrun`` (DESIGN.md, Scale).

``torchrun --nproc-per-node N --no-python wmil train-model ...`` (or ``wmil imagine`` for the
learners whose ``data_parallel`` is set: every built-in one) runs N copies of the same command; each reads the launcher's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins one process
group (gloo on CPU, NCCL on CUDA, one GPU per local rank). Without those variables (or with
``WORLD_SIZE=1``) nothing here does anything, so the one-process path is unchanged bit for bit.

How a run is split:

- **One global batch, sharded.** ``batch_size`` stays the global batch B. Every rank draws the
  same B windows from the same sampler state (its seed and position are in the checkpoint) and
  keeps rows ``[r·B/N, (r+1)·B/N)``. So the data one update sees does not depend on N, a run
  resumes with any number of processes, and N processes with B/N rows each take the same
  steps as one process with B rows (``tests/test_distributed.py`` checks it). B must be a
  multiple of N.
- **Gradients averaged** by one all-reduce of a flat buffer per update (what
  ``DistributedDataParallel`` does in buckets; the world models' ``loss()`` methods are not a
  ``forward`` DDP could hook). The mean of the ranks' mean gradients is the full batch's mean
  gradient when every rank holds the same number of real steps (no right padding); gradient
  clipping then acts on the averaged gradient, as in one process.
- **Identical parameters, different noise.** Every rank builds the model from the run seed (same
  initial weights) and applies the same averaged update; the latent noise of rank r > 0 comes
  from a generator seeded from (seed, rank, step), so ranks do not draw the same samples.
- **Imagination learners** shard the same way: the learner's NumPy generator is seeded alike on
  every rank, its samplers draw the global batch and keep the rank's block
  (:meth:`wmil.algos.base.Learner.shard`), and :func:`wmil.nets.reducing_gradients` makes every
  optimiser step average its gradients before clipping. Batch statistics are the global
  batch's: the actor-critic standardises advantages over every rank's rows (:meth:`Group.gather`).
- **Rank 0 alone writes**: config, metrics (the ranks' losses averaged), checkpoints,
  validation, progress. The other ranks read the checkpoint rank 0 resumes from and never lock
  or touch the run directory otherwise.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch

from wmil.errors import UserError


def launched() -> tuple[int, int]:
    """``(rank, world size)`` set by torchrun, else ``(0, 1)``."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise UserError("RANK/WORLD_SIZE are not integers; launch with torchrun or unset them") from None
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank}, WORLD_SIZE={size}: not a valid process layout; launch with torchrun")
    return rank, size


class Group:
    """This process's place in a data-parallel run (``size == 1``: the plain one-process case)."""

    def __init__(self, device: torch.device):
        self.rank, self.size = launched()
        if self.size > 1 and device.type == "cuda" and device.index is None:
            # one GPU per process on a node: torchrun's LOCAL_RANK picks it
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        self.device = device
        if self.size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def check_batch(self, batch_size: int, field: str) -> None:
        """A one-line error unless the global batch splits evenly over the processes."""
        if batch_size % self.size:
            raise UserError(f"{field}={batch_size} does not split over {self.size} processes; "
                            f"choose a multiple of {self.size} (it is the global batch)")

    def shard(self, batch):
        """This rank's rows of a global batch (a dataclass of ``(B, ...)`` tensors or None)."""
        if not self.parallel:
            return batch
        import dataclasses

        rows = batch.obs.shape[0] // self.size
        part = slice(self.rank * rows, (self.rank + 1) * rows)
        return dataclasses.replace(batch, **{f.name: (None if getattr(batch, f.name) is None
                                                       else getattr(batch, f.name)[part])
                                             for f in dataclasses.fields(batch)})

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the ranks (one all-reduce of a flat buffer)."""
        if not self.parallel:
            return
        params = [p for p in parameters if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def gather(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's ``tensor`` (the same shape on each) concatenated along ``dim`` in rank
        order: the global batch's rows, since each rank holds its block of one global draw."""
        if not self.parallel:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def average_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` averaged over the ranks (the same keys on every rank)."""
        if not self.parallel or not values:
            return values
        keys = sorted(values)
        flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(flat)
        return {k: float(v) / self.size for k, v in zip(keys, flat.tolist())}

    def reseed(self, seed: int, step: int) -> None:
        """Rank r > 0 draws its own latent noise: torch's generator from (seed, rank, step)."""
        if self.rank > 0:
            torch.manual_seed((seed * 1_000_003 + self.rank * 7_919 + step) % 2**63)

    def barrier(self) -> None:
        if self.parallel:
            torch.distributed.barrier()

    def close(self) -> None:
        """Wait for every rank, then leave the process group (a process that exits while
        gloo's threads still run aborts)."""
        if self.parallel and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def open_run(self, run, config: dict, trust: bool, defaults: dict):
        """The checkpoint a run resumes from (None when it starts afresh), the same on every rank:
        rank 0 opens ``run`` (a :class:`wmil.runs.RunDir`) with ``config``
        (``start_or_resume``; ``defaults`` fill fields older runs lack), the other ranks read
        that checkpoint once rank 0 has opened the run, and all check they resume at one step."""
        if self.main:
            resume = run.start_or_resume(config, trust=trust, defaults=defaults)
            self.barrier()
        else:
            self.barrier()
            resume = run.load_checkpoint(trust=trust, fallback=True)
        self.same_step(int(resume["step"]) if resume is not None else 0)
        return resume

    def same_step(self, step: int) -> None:
        """Raise unless every rank resumes from ``step`` (they read the same checkpoint)."""
        if not self.parallel:
            return
        steps = torch.tensor([step, -step], dtype=torch.int64)
        torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MAX)
        if int(steps[0]) != step or -int(steps[1]) != step:
            raise UserError(f"rank {self.rank} resumed at step {step} but another rank did not "
                            "(the run directory changed while the processes started); start again")


def current(device: Optional[torch.device] = None) -> Group:
    """The group of this process (initialising torch.distributed on first use under torchrun)."""
    return Group(device or torch.device("cpu"))


__all__ = ["Group", "current", "launched"]
