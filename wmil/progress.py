"""Progress bars on stderr (tqdm), or a silent stand-in when disabled."""

from __future__ import annotations

import sys


class NoBar:
    """Accepts the tqdm calls wmil makes and does nothing."""

    def update(self, n=1): ...
    def set_postfix(self, *args, **kwargs): ...
    def close(self): ...


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0):
    if not enabled:
        return NoBar()
    from tqdm.auto import tqdm

    # Redirected to a file or a CI log, a bar redraws as new text: redraw rarely there.
    interval = 0.2 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=interval)
