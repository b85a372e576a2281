"""How many CPU threads torch uses, and a watch for the slowdown a wrong choice causes.

Default: **one thread** on CPU. Measured with ``benchmarks/threads.py`` on the 2-core machines
this project targets (``benchmarks/results/threads.md``; a shared machine, load average 1.6–3.3
even in the "quiet" runs): world-model and DITTO updates, tiny and small, vector and 64×64
pixels, never ran clearly faster on 2 threads than on 1 (at best 1.09×), and 2 threads
collapsed whenever another process held a core — OpenMP threads spin at every barrier waiting
for the descheduled one: tiny world model 1.9 updates/s against 35.7 with 1 thread beside the
same busy process, small world model 0.071 against 0.65, tiny DITTO 1.3 against 51. A user saw
the same, 21.8 → 0.275 updates/s. With ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of
spinning) 2 threads did not collapse (0.2–0.6 of the quiet 1-thread rate when busy) but were
up to 5× slower than 1 thread on tiny models. So wmil takes one thread; ``--threads N`` (or
``WMIL_NUM_THREADS=N``) asks for more, and the CLI then sets ``OMP_WAIT_POLICY=PASSIVE``
unless the user set it (it only takes effect before torch is imported, which the CLI defers).

Order of precedence in :func:`configure_threads`: the ``threads`` argument (``--threads``), then
the ``WMIL_NUM_THREADS`` environment variable, then a count the user already chose
(``OMP_NUM_THREADS`` or an earlier ``torch.set_num_threads`` to something other than torch's
own default), then :data:`DEFAULT_THREADS`.
"""

from __future__ import annotations

import os
from typing import Optional

from wmil.errors import UserError

ENV_VAR = "WMIL_NUM_THREADS"
#: wmil's default torch thread count on CPU (see the module docstring for the measurement).
DEFAULT_THREADS = 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_threads(value, where: str) -> int:
    """``value`` as a thread count ≥ 1; a one-line UserError naming ``where`` otherwise."""
    try:
        threads = int(str(value).strip())
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(f"{where}={value!r}: expected a whole number of threads >= 1 (e.g. 1)")
    return threads


def requested_threads() -> Optional[int]:
    """The count asked for through ``WMIL_NUM_THREADS``, or None."""
    value = os.environ.get(ENV_VAR, "").strip()
    return parse_threads(value, ENV_VAR) if value else None


def configure_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op CPU thread count (see the module docstring) and return it."""
    import torch

    if threads is not None:
        threads = parse_threads(threads, "threads")
    else:
        threads = requested_threads()
    if threads is None:
        chosen_elsewhere = bool(os.environ.get("OMP_NUM_THREADS")) or torch.get_num_threads() != available_cores()
        threads = torch.get_num_threads() if chosen_elsewhere else DEFAULT_THREADS
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def use_threads(threads: Optional[int]) -> None:
    """Make ``threads`` the count for the rest of this process and its child processes (the CLI's
    ``--threads``): it is exported as ``WMIL_NUM_THREADS`` and applied when torch is first used.
    More than one thread also exports ``OMP_WAIT_POLICY=PASSIVE`` (unless set): measured, it
    keeps 2 threads from collapsing beside a busy process (module docstring)."""
    if threads is not None:
        threads = parse_threads(threads, "--threads")
        os.environ[ENV_VAR] = str(threads)
        if threads > 1:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int) -> int:
    """Use ``threads`` torch CPU threads from now on, in this process and the processes it starts
    (the library's ``--threads``); returns the count."""
    use_threads(threads)
    return configure_threads()


class RateWatch:
    """Notices when updates/s collapses mid-run: a logged window slower than ``fraction`` of the
    best window so far, ``patience`` times in a row (one slow window is an evaluation or a
    checkpoint).

    The best rate comes from windows of at least ``min_updates`` updates (a rate over two
    millisecond-long updates is noise); a window counts as slow only if it lasted at least
    ``min_seconds`` (a collapse makes windows long). :meth:`observe` returns a one-line warning
    the first time, None otherwise.
    """

    def __init__(self, fraction: float = 0.25, min_seconds: float = 1.0, min_updates: int = 5, patience: int = 2):
        self.fraction = fraction
        self.min_seconds = min_seconds
        self.min_updates = min_updates
        self.patience = patience
        self.best = 0.0
        self.slow = 0
        self.warned = False

    def observe(self, updates: int, seconds: float, threads: int) -> Optional[str]:
        """Record a window of ``updates`` updates that took ``seconds`` with ``threads`` threads."""
        if self.warned or updates < 1 or seconds <= 0:
            return None
        rate = updates / seconds
        if rate < self.fraction * self.best:
            if seconds >= self.min_seconds:
                self.slow += 1
        else:
            self.slow = 0
            if updates >= self.min_updates:
                self.best = max(self.best, rate)
        if self.slow < self.patience:
            return None
        self.warned = True
        where = f"updates/s fell from {self.best:.3g} to {rate:.3g}"
        if threads > 1:
            return (f"warning: {where} with {threads} threads: another process is probably competing for the "
                    "cores; stop this run (Ctrl-C) and re-run the same command with --threads 1 (it resumes "
                    "from the last checkpoint)")
        return f"warning: {where}: another process is competing for this CPU; the run goes on, more slowly"
