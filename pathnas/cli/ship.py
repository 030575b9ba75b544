"""Commands after the search: extract, retrain, quantize, export, validate, and the whole pipeline."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathnas.deploy.runtimes import FORMATS, PRECISIONS
from pathnas.settings import CalibrationSettings, PipelineSettings, RetrainConfig, parse_choices

from .common import JSON_HELP, RUN_HELP, console, on_interrupt, print_json
from .options import settings_options

FORCE_HELP = "run the stage even if RUN/stages.json says it is up to date"


def _layout(run_dir: Path):
    from pathnas.pipeline import RunLayout

    layout = RunLayout(run_dir)
    on_interrupt(f"finished stages are recorded in {layout.stages}; run the same command again to resume")
    return layout


def extract(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    supernet: Path = typer.Option(..., help="pretrained supernet checkpoint"),
    arch: Optional[str] = typer.Option(None, help="architecture (default: the best of RUN/search/summary.json)"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Extract the chosen path into a standalone model (RUN/extract/subnet.pt)."""
    from pathnas.pipeline.stages import stage_extract

    info = stage_extract(_layout(run_dir), supernet, arch, force)
    print_json(info) if as_json else console.print(f"extracted {info['arch']} -> {info['path']}", markup=False)


@settings_options(RetrainConfig, ("data", "epochs", "batch_size", "lr", "mixup_alpha", "cutmix_alpha", "from_scratch",
                                  "seed", "device", "skip_bad"), what="retraining")
def retrain(
    cfg: RetrainConfig,
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Retrain the extracted subnet; best epoch by val, test read once at the end. Resumable (with the same
    settings and subnet only)."""
    from pathnas.pipeline.stages import stage_retrain

    summary = stage_retrain(_layout(run_dir), cfg, force)
    if as_json:
        print_json(summary)
    else:
        key = summary["metric_name"]
        console.print(f"best epoch {summary['best_epoch']}: val {key} {summary['val'][key]:.2f}, "
                      f"test {key} {summary['test'][key]:.2f}")


@settings_options(CalibrationSettings, into="calibration", what="calibration", options={
    "reduce_range": {"decls": ("--reduce-range/--full-range-weights",)}})
def quantize(
    calibration: CalibrationSettings,
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="calibration images come from its TRAIN split, accuracy control uses VAL"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Static INT8 PTQ of RUN/export/model.onnx into RUN/quantize/model_int8.onnx (QDQ, per-channel),
    calibrated on train; sensitive layers stay float until agreement and metric pass on val."""
    from pathnas.pipeline.stages import stage_quantize

    layout = _layout(run_dir)
    info = stage_quantize(layout, data, calibration, force)
    if as_json:
        print_json(info)
        return
    console.print(f"INT8 QDQ model: {layout.int8_onnx} ({info['size_mb']:.3f} MB, "
                  f"{100 * info['size_mb'] / info['fp32_size_mb']:.0f}% of FP32); "
                  f"{info['quantizable_nodes'] - len(info['float_nodes'])} of {info['quantizable_nodes']} layers "
                  f"quantized, kept float: {', '.join(info['float_nodes']) or 'none'}", markup=False)
    for runtime, result in (info.get("runtimes") or {"onnxruntime": info}).items():
        control = result["accuracy_control"]
        if not control:
            continue
        f = control["figures"]
        console.print(f"{runtime} ({result.get('file', layout.int8_onnx.name)}, kept float: "
                      f"{', '.join(result['float_nodes']) or 'none'}) on {control['images']} val images: top-1 "
                      f"agreement {f['top1_agreement_pct']:.2f}%, {f['metric_name']} {f['metric_delta']:+.2f}, cosine "
                      f"{f['cosine']:.5f}, max |delta| {f['max_abs_diff']:.3g}"
                      + ("" if control["passed"] else f"; MISSES the INT8 thresholds: {control['reason']}"),
                      markup=False, style=None if control["passed"] else "red")


@settings_options(CalibrationSettings, ("calibration_images",), into="calibration", what="calibration")
def export(
    calibration: CalibrationSettings,
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="the data set (INT8 calibration uses its TRAIN split)"),
    format: str = typer.Option(",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}"),
    precision: str = typer.Option("fp32,int8", help=f"comma-separated: {', '.join(PRECISIONS)}"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Export the retrained (or extracted) model; unavailable combinations are skipped with the reason."""
    from rich.markup import escape

    from pathnas.pipeline.stages import stage_export

    rows = stage_export(_layout(run_dir), data, list(parse_choices(format, FORMATS, "--format")),
                        list(parse_choices(precision, PRECISIONS, "--precision")), calibration, force)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        colour = {"exported": "green", "skipped": "yellow"}.get(r["status"], "red")
        console.print(f"[{colour}]{r['format']:9s} {r['precision']:5s} {r['status']}[/{colour}] "
                      f"{escape(r['path'] or '')}{escape(': ' + r['reason']) if r['reason'] else ''}")


def validate(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="validation images come from its VAL split"),
    threads: Optional[int] = typer.Option(None, help="runtime threads (default: the runtime's own)"),
    max_images: Optional[int] = typer.Option(None, help="cap on validation images"),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare every exported artifact with PyTorch on real validation images; exit 1 on a miss."""
    from pathnas.pipeline.stages import stage_validate

    layout = _layout(run_dir)
    report = stage_validate(layout, data, threads, max_images, force)
    if as_json:
        print_json(report)
    else:
        print_report(report)
        console.print(f"full table: {layout.report_markdown}", markup=False)
    if not report["passed"]:
        raise typer.Exit(1)


def print_report(report: dict) -> None:
    """The validation table, sized for this terminal (export.report holds the one table; report.md has it all)."""
    from pathnas.export.report import print_report as print_table

    print_table(report, console)


@settings_options(PipelineSettings, tuple(f for f in PipelineSettings.model_fields if f != "space"),
                  what="pipeline", options={"formats": {"decls": ("--formats", "--format")},
                                            "precisions": {"decls": ("--precisions", "--precision")}})
def pipeline(
    settings: PipelineSettings,
    run_dir: Path = typer.Option(Path("runs/demo"), help="the run directory (re-running resumes it)"),
) -> None:
    """Everything, on the embedded default unless told otherwise: data, supernet, latency table,
    search, extract, retrain, quantize, export, validate, and a verified bundle for the device run once
    without PyTorch. Stages already done are skipped; every setting is checked before the first stage;
    one pipeline at a time per run directory."""
    from pathnas.io import read_json
    from pathnas.pipeline import run_pipeline

    layout = _layout(run_dir)
    summary = run_pipeline(run_dir, settings)
    print_report(read_json(layout.report, "validation report"))
    best = summary["search"]
    key = summary["retrain"]["metric_name"]
    skipped = f" ({summary['skipped_files']} unusable file(s) skipped, listed in splits.json)" \
        if summary.get("skipped_files") else ""
    console.print(f"searched {best['arch']} for {summary['device']}: retrained test {key} "
                  f"{summary['retrain']['test'][key]:.2f}{skipped}; everything is in {run_dir}", markup=False)
    if summary.get("bundle"):
        console.print(f"bundle {summary['bundle']} ({'signed' if summary['signed'] else 'unsigned'}), verified and "
                      f"run without PyTorch: smoke test {'passed' if summary['smoke_test_passed'] else 'FAILED'}",
                      markup=False)
        console.print(f"on the workstation: {summary['workstation_commands'][0]}", markup=False)
    else:
        console.print(summary["bundle_note"], markup=False)
    console.print(f"report: {summary['report']} (open it in a browser)", markup=False)
    if not summary["validation_passed"]:
        raise typer.Exit(1)


COMMANDS = (extract, retrain, quantize, export, validate, pipeline)
