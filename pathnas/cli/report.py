"""`pathnas-edge report RUN`: the run as one self-contained HTML file (pathnas/pipeline/report.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import JSON_HELP, console, print_json


def report(
    run_dir: Path = typer.Argument(..., metavar="RUN", help="a run directory (the pipeline's), or a search's run directory"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="where to write the HTML (default: RUN/report.html)"),
    junit: list[Path] = typer.Option([], "--junit", metavar="FILE", help="a `regress --junit` report to show (repeatable)"),
    baseline: list[Path] = typer.Option([], "--baseline", metavar="FILE",
                                        help="a latency baseline a workstation measured, to show (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the run's report: the search, the chosen model's layers on the device, validation against
    PyTorch, the bundle and its latency checks. One file: no network, nothing fetched, no script."""
    from pathnas.pipeline.report import write_run_report

    path = write_run_report(run_dir, out, junit, baseline)
    if as_json:
        print_json({"report": str(path), "bytes": path.stat().st_size})
    else:
        console.print(f"report {path} ({path.stat().st_size / 1e6:.2f} MB)", markup=False, highlight=False)


COMMANDS = (report,)
