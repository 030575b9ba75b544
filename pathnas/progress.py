"""The toolchain's progress bars: one look for every long step (pretraining, packing data, exporting and
timing a latency table), drawn by rich on stderr. The torch-free runtime has its own (deploy/progress.py,
tqdm), since rich is not part of the runtime install."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(*, console: Console | None = None, transient: bool = False, disable: bool | None = None) -> Progress:
    """A rich Progress with the description, the bar, done/total and the time left. ``disable`` defaults to
    "stderr is not a terminal" when no console is given, so a log file gets no bar."""
    if console is None:
        console = Console(stderr=True)
        disable = not sys.stderr.isatty() if disable is None else disable
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=transient, disable=bool(disable))
