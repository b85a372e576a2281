"""Progress on stderr: a tqdm bar on a terminal, plain lines every few seconds elsewhere.

Redirected to a file or a CI log, a redrawing bar either floods the log or (drawn rarely) looks
stalled; there :class:`LineProgress` prints one self-contained line every ``interval`` seconds
(``desc: 120/200 upd (60%), 21.8 upd/s, eta 4s, loss=0.53``) and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

#: Seconds between progress lines when stderr is not a terminal.
LINE_INTERVAL = 5.0


class NoBar:
    """Accepts the progress calls wmil makes and does nothing (messages still reach stderr)."""

    def update(self, n=1): ...
    def set_postfix(self, *args, **kwargs): ...
    def close(self): ...

    def write(self, message: str, file=None) -> None:
        print(message, file=file or sys.stderr, flush=True)


class LineProgress:
    """Off-terminal progress: a plain line every ``interval`` seconds and at :meth:`close`."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, interval: float = LINE_INTERVAL,
                 file=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.interval = interval
        self.file = file if file is not None else sys.stderr
        self.postfix: dict = {}
        self.started = self.last_print = time.perf_counter()
        self.last_n: Optional[int] = None

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self.last_print >= self.interval:
            self._print()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def write(self, message: str, file=None) -> None:
        print(message, file=file or self.file, flush=True)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if rate > 0 and self.n < self.total:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _print(self) -> None:
        self.write(self.line())
        self.last_print = time.perf_counter()
        self.last_n = self.n

    def close(self) -> None:
        if self.last_n != self.n:
            self._print()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0):
    """A tqdm bar when stderr is a terminal, :class:`LineProgress` otherwise, :class:`NoBar` when
    disabled. Each has ``update``, ``set_postfix``, ``write(message, file=sys.stderr)`` (a message
    that keeps the bar intact) and ``close``."""
    if not enabled:
        return NoBar()
    if not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.2)
