"""CLI: `pathnas-edge package`, `verify` and `regress` (of a model file or a bundle)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    for command in (package, verify, regress):
        app.command()(command)


def package(
    run_dir: Path = typer.Argument(..., help="a run directory whose artifacts passed `pathnas-edge validate`"),
    device: str = typer.Option(..., help="hardware profile the bundle is for"),
    out: Path = typer.Option(..., help="bundle folder to create (a .zip of it is written beside it)"),
    no_latency: bool = typer.Option(False, "--no-latency", help="do not measure the latency baseline here"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Package a validated model for an offline workstation: model files, preprocessing, labels,
    manifest with SHA-256 of every file, model card, latency baseline."""
    from pathnas.cli import console
    from pathnas.profiling import load_profile

    from .bundle import package as build

    bundle = build(run_dir, load_profile(device), out, measure_latency=not no_latency)
    manifest = json.loads((bundle / "manifest.json").read_text())
    baseline = manifest["latency_baseline"]
    if as_json:
        print(json.dumps({"bundle": str(bundle), "zip": str(bundle.with_suffix(".zip")), "files": manifest["files"],
                          "model": manifest["model"], "latency_baseline": baseline}, indent=2))
        return
    console.print(f"[green]bundle[/green] {bundle} and {bundle.with_suffix('.zip')}: "
                  f"{len(manifest['files'])} files, model {manifest['model']['default']}")
    console.print(f"latency baseline: {baseline['median_ms']:.3f} ms median on {baseline['device']}" if baseline
                  else f"latency baseline: {manifest['latency_baseline_note']}")


def verify(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check the manifest and every hash; exit 1 naming each missing, extra or changed file."""
    from pathnas.cli import console, err_console

    from .manifest import verification_problems

    problems = verification_problems(bundle)
    if as_json:
        print(json.dumps({"bundle": str(bundle), "verified": not problems, "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            err_console.print(f"[red]FAIL[/red] {problem}", markup=True, soft_wrap=True)
    else:
        console.print(f"[green]OK[/green] {bundle}: every file matches its manifest")
    if problems:
        raise typer.Exit(1)


def regress(
    model: Path = typer.Argument(..., help="a bundle folder, an ONNX model (.onnx) or OpenVINO IR (.xml)"),
    baseline: Optional[Path] = typer.Option(None, help="baseline JSON (not needed for a bundle: its manifest has one)"),
    device: Optional[str] = typer.Option(None, help="hardware profile of this machine (default: a bundle's, else cpu)"),
    tolerance: float = typer.Option(0.10, min=0.0, help="allowed slowdown, 0.10 = 10%"),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999),
    rounds: int = typer.Option(5, min=1, help="timing rounds (20 samples each)"),
    junit: Optional[Path] = typer.Option(None, help="write a JUnit XML report here"),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="measure and (over)write the baseline"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Exit 1 when the model is slower on this device than its baseline beyond the tolerance
    (bootstrap confidence interval of the ratio of medians; a noisy run alone does not fail)."""
    from pathnas.cli import console
    from pathnas.profiling import load_profile
    from pathnas.profiling.regress import check_regression, make_baseline, measure_samples, save_baseline, write_junit

    from .regress import check_bundle, measure_bundle_baseline

    start = time.perf_counter()
    if model.is_dir():  # a bundle: it must verify, and it names its model, profile and baseline
        if update_baseline:
            fresh = measure_bundle_baseline(model, device, rounds)
            console.print(f"baseline written to {model / 'manifest.json'}: median {fresh['median_ms']:.3f} ms")
            return
        verdict, hw = check_bundle(model, device, tolerance, confidence, rounds)
    else:
        if not model.is_file():
            raise FileNotFoundError(f"model {model} does not exist")
        if baseline is None:
            raise ValueError("--baseline FILE is needed for a model file (a bundle carries its own)")
        hw = load_profile(device or "cpu")
        if update_baseline:
            fresh = make_baseline(model, hw, measure_samples(model, hw, rounds))
            save_baseline(baseline, fresh)
            console.print(f"baseline written to {baseline}: median {fresh['median_ms']:.3f} ms")
            return
        if not baseline.is_file():
            raise FileNotFoundError(f"baseline {baseline} does not exist; measure one on this device with --update-baseline")
        try:
            reference = json.loads(baseline.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{baseline}: not valid JSON ({err})") from None
        verdict = check_regression(model, hw, reference, tolerance, confidence, rounds, str(baseline))
    if junit:
        write_junit(junit, f"{model.name}@{hw.name}", verdict, time.perf_counter() - start)
    if as_json:
        print(json.dumps({"model": str(model), "device": hw.name, **verdict.as_dict()}, indent=2))
    else:
        console.print(("[green]" if verdict.passed else "[red]") + verdict.summary())
    if not verdict.passed:
        raise typer.Exit(1)
