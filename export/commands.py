"""CLI: the stages after the search: extract, retrain, quantize, export, validate."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

RUN_HELP = "run directory (stages read and write it)"


def register(app: typer.Typer) -> None:
    for command in (extract, retrain, quantize, export, validate):
        app.command()(command)


def extract(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    supernet: Path = typer.Option(..., help="pretrained supernet checkpoint"),
    arch: Optional[str] = typer.Option(None, help="architecture (default: the best of RUN/search/summary.json)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Extract the chosen path into a standalone model (RUN/extract/subnet.pt)."""
    from pathnas.cli import console
    from pathnas.pipeline import stage_extract

    info = stage_extract(run_dir, supernet, arch)
    print(json.dumps(info, indent=2)) if as_json else console.print(f"extracted {info['arch']} -> {info['path']}")


def retrain(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="the data set (its saved splits are reused)"),
    epochs: int = typer.Option(30, min=1),
    batch_size: int = typer.Option(32, min=2),
    lr: float = typer.Option(0.02),
    mixup_alpha: float = typer.Option(0.8),
    cutmix_alpha: float = typer.Option(1.0),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="start from fresh weights, not the inherited ones"),
    device: str = typer.Option("auto"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrain the extracted subnet; best epoch by val, test read once at the end. Resumable."""
    from pathnas.cli import console
    from pathnas.retrain import RetrainConfig, retrain as run_retrain

    cfg = RetrainConfig(data=data, epochs=epochs, batch_size=batch_size, lr=lr, mixup_alpha=mixup_alpha,
                        cutmix_alpha=cutmix_alpha, from_scratch=from_scratch, device=device)
    summary = run_retrain(run_dir / "extract" / "subnet.pt", cfg, run_dir / "retrain")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        key = summary["metric_name"]
        console.print(f"best epoch {summary['best_epoch']}: val {key} {summary['val'][key]:.2f}, "
                      f"test {key} {summary['test'][key]:.2f}")


def quantize(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="calibration images come from its TRAIN split"),
    calibration_images: int = typer.Option(512, min=1),
    quantize_first_conv: bool = typer.Option(False, "--quantize-first-conv", help="also quantize the first conv"),
    quantize_classifier: bool = typer.Option(False, "--quantize-classifier", help="also quantize the classifier"),
    full_range_weights: bool = typer.Option(False, "--full-range-weights",
                                            help="8-bit weights (safe on VNNI CPUs and GPUs; AVX2-only CPUs saturate)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Static INT8 PTQ of RUN/export/model.onnx into RUN/quantize/model_int8.onnx (QDQ, per-channel)."""
    from pathnas.cli import console
    from pathnas.data import build_loaders
    from pathnas.export.quantize import calibration_batches, quantize_int8, write_calibration_record

    source = run_dir / "export" / "model.onnx"
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: run `pathnas-edge export --format onnx` first")
    preprocess = json.loads((run_dir / "export" / "preprocess.json").read_text())
    bundle = build_loaders(data, preprocess["input_size"], 16)
    info = quantize_int8(source, run_dir / "quantize" / "model_int8.onnx",
                         calibration_batches(bundle.calib, calibration_images), not quantize_first_conv,
                         not quantize_classifier, calibration_images, reduce_range=not full_range_weights)
    write_calibration_record(run_dir / "quantize" / "calibration.json", info)
    int8 = run_dir / "quantize" / "model_int8.onnx"
    info["size_mb"], info["fp32_size_mb"] = int8.stat().st_size / 1e6, source.stat().st_size / 1e6
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        console.print(f"INT8 QDQ model: {int8} ({info['size_mb']:.3f} MB, {100 * info['size_mb'] / info['fp32_size_mb']:.0f}% "
                      f"of FP32; float nodes: {info['float_nodes']})")


def export(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="the data set (INT8 calibration uses its TRAIN split)"),
    format: str = typer.Option("onnx,openvino,tensorrt", help="comma-separated: onnx, openvino, tensorrt"),
    precision: str = typer.Option("fp32,int8", help="comma-separated: fp32, fp16, int8"),
    calibration_images: int = typer.Option(512, min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Export the retrained (or extracted) model; unavailable combinations are skipped with the reason."""
    from rich.markup import escape

    from pathnas.cli import console
    from pathnas.export.artifacts import FORMATS, PRECISIONS, parse_list
    from pathnas.pipeline import stage_export

    rows = stage_export(run_dir, data, parse_list(format, FORMATS, "--format"),
                        parse_list(precision, PRECISIONS, "--precision"), calibration_images)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        colour = {"exported": "green", "skipped": "yellow"}.get(r["status"], "red")
        console.print(f"[{colour}]{r['format']:9s} {r['precision']:5s} {r['status']}[/{colour}] "
                      f"{r['path'] or ''}{escape(': ' + r['reason']) if r['reason'] else ''}")


def validate(
    run_dir: Path = typer.Option(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="validation images come from its VAL split"),
    threads: Optional[int] = typer.Option(None, help="runtime threads (default: the runtime's own)"),
    max_images: Optional[int] = typer.Option(None, help="cap on validation images"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compare every exported artifact with PyTorch on real validation images; exit 1 on a miss."""
    from pathnas.cli import console
    from pathnas.export.report import print_report
    from pathnas.pipeline import stage_validate

    report = stage_validate(run_dir, data, threads, max_images)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, console)
        console.print(f"report: {run_dir / 'validate' / 'report.md'}")
    if not report["passed"]:
        raise typer.Exit(1)
