"""The validation report: saved as JSON and Markdown, printed as a table. The one place for its table.

Both tables are rich Tables: the Markdown one drawn with rich's MARKDOWN box (a pipe table), the
terminal one sized to the console. rich is already a toolchain dependency; tabulate would add a
package for the same job.
"""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path

from pathnas.deploy.card import figure
from pathnas.io import write_json_atomic, write_text_atomic

# The files this module writes into RUN/validate (pathnas.pipeline.layout names them from here).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"

COLUMNS = ("Backend", "Device/provider", "Precision", "Status", "Size MB", "max|Δ|", "cosine", "top-1 agree %",
           "metric (Δ)", "latency p50 / p90 ms @bs1", "images/s")
# The terminal's table below WIDE columns: the figures that decide the verdict (report.md has them all).
NARROW = ("backend", "prec", "status", "agree %", "cosine", "p50 ms", "MB")
WIDE = 150
_cell = partial(figure, missing="")  # an empty cell where a figure was not measured
STATUS_STYLE = {"passed": "green", "failed-validation": "red", "failed": "red", "skipped": "yellow"}


def row_cells(r: dict, with_reason: bool = True) -> list[str]:
    status = r["status"] + (f": {r['reason']}" if with_reason and r.get("reason") else "")
    metric = "" if r.get("metric") is None else f"{r['metric']:.2f} ({r['metric_delta']:+.2f})"
    latency = "" if r.get("latency_p50_ms") is None else f"{r['latency_p50_ms']:.3f} / {r['latency_p90_ms']:.3f}"
    return [r["backend"], r.get("device") or "", r["precision"], status, _cell(r.get("size_mb"), ".3f"),
            _cell(r.get("max_abs_diff"), ".2e"), _cell(r.get("cosine"), ".7f"), _cell(r.get("top1_agreement_pct"), ".2f"),
            metric, latency, _cell(r.get("images_per_s"), ".0f")]


def _narrow_cells(r: dict) -> list[str]:
    cells = row_cells(r, with_reason=False)
    p50 = "" if r.get("latency_p50_ms") is None else f"{r['latency_p50_ms']:.3f}"
    return [cells[0], cells[2], cells[3], cells[7], _cell(r.get("cosine"), ".6f"), p50, cells[4]]


def markdown(report: dict) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    metric = next((r["metric_name"] for r in report["rows"] if r.get("metric_name")), "metric")
    def cell(text: str) -> str:  # a pipe or a line break would end the Markdown cell
        return text.replace("|", "\\|").replace("\n", " ")

    table = Table(*map(cell, COLUMNS), box=box.MARKDOWN)
    for r in report["rows"]:
        table.add_row(*map(cell, row_cells(r)))
    out = io.StringIO()
    Console(file=out, width=100_000, color_system=None, markup=False, emoji=False, highlight=False).print(table)
    lines = [f"# Validation against PyTorch ({report['images']} {report['split']} images; metric: {metric})", "",
             *(line.rstrip() for line in out.getvalue().strip().splitlines()),
             "", "Thresholds: " + "; ".join(f"{p}: {t}" for p, t in report["thresholds"].items()),
             "", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             "", f"Overall: {'PASSED' if report['passed'] else 'FAILED'}"]
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def save_report(report: dict, folder: Path) -> None:
    write_json_atomic(Path(folder) / REPORT_JSON, report)
    write_text_atomic(Path(folder) / REPORT_MD, markdown(report))


def print_report(report: dict, console) -> None:
    """The validation table on ``console``, sized for it: every column from WIDE columns, else the
    figures that decide the verdict; each row's reason as a numbered note under the table."""
    from rich.markup import escape
    from rich.table import Table

    wide = console.width >= WIDE
    table = Table(title=f"validation on {report['images']} {report['split']} images", title_justify="left")
    for col in COLUMNS if wide else NARROW:
        table.add_column(col, overflow="fold")
    status_col = 3 if wide else 2
    notes = []
    for r in report["rows"]:
        cells = row_cells(r, with_reason=False) if wide else _narrow_cells(r)
        if r.get("reason"):
            notes.append(f"[{len(notes) + 1}] {r['backend']} {r['precision']}: {r['reason'].splitlines()[0]}")
            cells[status_col] += f" [{len(notes)}]"
        table.add_row(*(escape(c) for c in cells), style=STATUS_STYLE.get(r["status"]))
    console.print(table)
    for note in notes + report.get("notes", []):
        console.print(note, soft_wrap=True, markup=False)
    console.print("[green]all artifacts passed[/green]" if report["passed"] else "[red]validation FAILED[/red]")
