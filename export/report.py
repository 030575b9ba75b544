"""The validation report: saved as JSON and Markdown, printed as a table."""
from __future__ import annotations

from pathlib import Path

from pathnas.io import write_json_atomic, write_text_atomic

COLUMNS = ("Backend", "Device/provider", "Precision", "Status", "Size MB", "max|Δ|", "cosine", "top-1 agree %",
           "metric (Δ)", "latency p50 / p90 ms @bs1", "images/s")


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def row_cells(r: dict, with_reason: bool = True) -> list[str]:
    status = r["status"] + (f": {r['reason']}" if with_reason and r.get("reason") else "")
    metric = "" if r.get("metric") is None else f"{r['metric']:.2f} ({r['metric_delta']:+.2f})"
    latency = "" if r.get("latency_p50_ms") is None else f"{r['latency_p50_ms']:.3f} / {r['latency_p90_ms']:.3f}"
    return [r["backend"], r.get("device") or "", r["precision"], status, _fmt(r.get("size_mb"), ".3f"),
            _fmt(r.get("max_abs_diff"), ".2e"), _fmt(r.get("cosine"), ".7f"), _fmt(r.get("top1_agreement_pct"), ".2f"),
            metric, latency, _fmt(r.get("images_per_s"), ".0f")]


def markdown(report: dict) -> str:
    metric = next((r["metric_name"] for r in report["rows"] if r.get("metric_name")), "metric")
    lines = [f"# Validation against PyTorch ({report['images']} {report['split']} images; metric: {metric})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row_cells(r)) + " |"
              for r in report["rows"]]
    lines += ["", "Thresholds: " + "; ".join(f"{p}: {t}" for p, t in report["thresholds"].items()),
              "", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
              "", f"Overall: {'PASSED' if report['passed'] else 'FAILED'}"]
    if report.get("notes"):
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def save_report(report: dict, folder: Path) -> None:
    write_json_atomic(Path(folder) / "report.json", report)
    write_text_atomic(Path(folder) / "report.md", markdown(report))


def print_report(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"validation on {report['images']} {report['split']} images")
    for col in COLUMNS:
        table.add_column(col)
    notes = []
    for r in report["rows"]:
        style = {"passed": "green", "failed-validation": "red", "failed": "red", "skipped": "yellow"}.get(r["status"])
        cells = row_cells(r, with_reason=False)
        if r.get("reason"):
            notes.append(f"[{len(notes) + 1}] {r['backend']} {r['precision']}: {r['reason'].splitlines()[0]}")
            cells[3] += f" [{len(notes)}]"
        table.add_row(*(escape(c) for c in cells), style=style)
    console.print(table)
    for note in notes + report.get("notes", []):
        console.print(note, soft_wrap=True, markup=False)
    console.print("[green]all artifacts passed[/green]" if report["passed"] else "[red]validation FAILED[/red]")
