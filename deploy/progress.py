"""Progress bars on the console for long runs: per slide (tiles, tiles/s, ETA) and over all inputs. Torch-free.

tqdm draws them when the console is a terminal (and tqdm is installed); when output goes to a
file or a pipe (a cron job, a test) there are no bars, and the one-line summary per input
stays the record.
"""
from __future__ import annotations

import shutil
import sys


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int | None, description: str, unit: str, position: int = 0, leave: bool = True):
    """A tqdm bar on stderr when it is a terminal, else an object with the same methods that draws nothing."""
    if not sys.stderr.isatty():
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:  # an install without it: the summary lines only
        return _Silent()

    # the terminal's width, 80 where it reports none (tqdm would draw a bar of width 0)
    return tqdm(total=total, desc=description, unit=unit, position=position, leave=leave, file=sys.stderr,
                ncols=min(shutil.get_terminal_size((80, 24)).columns, 120), smoothing=0.1)
