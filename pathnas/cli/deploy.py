"""Commands that make and check what ships: package, verify, regress.

`verify` and `regress` of a bundle are the workstation toolkit's (`pathnas-infer verify|regress`),
run here too; `regress` of a bare model file takes a baseline file and a hardware profile.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from pathnas.errors import ConfigError, MissingFileError

from .common import JSON_HELP, console, on_interrupt, print_json


def package(
    run_dir: Path = typer.Argument(..., help="a run directory whose artifacts passed `pathnas-edge validate`"),
    device: str = typer.Option(..., help="hardware profile the bundle is for"),
    out: Path = typer.Option(..., help="bundle folder to create (a .zip of it is written beside it)"),
    no_latency: bool = typer.Option(False, "--no-latency", help="do not measure the latency baseline here"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Package a validated model for an offline workstation: model files, preprocessing, labels,
    manifest with SHA-256 of every file, model card, latency baseline."""
    from pathnas.deploy.manifest import read_manifest
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_package
    from pathnas.profiling import load_profile

    on_interrupt("nothing was written: a bundle appears only once it is complete; run the command again")
    # force: an explicit --out is built now or refused if it exists, never silently taken as up to date
    bundle = stage_package(RunLayout(run_dir), load_profile(device), out, measure_latency=not no_latency, force=True)
    manifest = read_manifest(bundle)
    baseline = manifest["latency_baseline"]
    if as_json:
        print_json({"bundle": str(bundle), "zip": f"{bundle}.zip", "files": manifest["files"],
                    "model": manifest["model"], "latency_baseline": baseline})
        return
    console.print(f"[green]bundle[/green] {bundle} and {bundle}.zip: {len(manifest['files'])} files, "
                  f"model {manifest['model']['default']}")
    console.print(f"latency baseline: {baseline['median_ms']:.3f} ms median on {baseline['device']}" if baseline
                  else f"latency baseline: {manifest['latency_baseline_note']}", markup=False)
    console.print(f"on the workstation: pathnas-infer verify {bundle.name}", markup=False)


def verify(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the manifest and every hash; exit 1 naming each missing, extra or changed file."""
    from pathnas.deploy.toolkit import verify_bundle

    code = verify_bundle(bundle, as_json)
    if code:
        raise typer.Exit(code)


def regress(
    model: Path = typer.Argument(..., help="a bundle folder, an ONNX model (.onnx) or OpenVINO IR (.xml)"),
    baseline: Optional[Path] = typer.Option(None, help="baseline JSON (a bundle's default: its manifest's)"),
    device: Optional[str] = typer.Option(None, help="hardware profile of this machine, for a model file "
                                                    "(default: cpu)"),
    tolerance: float = typer.Option(0.10, min=0.0, help="allowed slowdown, 0.10 = 10%"),
    confidence: float = typer.Option(0.95, min=0.5, max=0.999),
    rounds: int = typer.Option(5, min=1, help="timing rounds (20 samples each)"),
    junit: Optional[Path] = typer.Option(None, help="write a JUnit XML report here"),
    update_baseline: bool = typer.Option(False, "--update-baseline", help="measure and (over)write the baseline"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Exit 1 when the model is slower on this device than its baseline beyond the tolerance
    (bootstrap confidence interval of the ratio of medians; a noisy run alone does not fail)."""
    from pathnas.deploy.regress import RunSettings, check_regression, make_baseline, measure_samples, save_baseline
    from pathnas.deploy.regress import write_junit
    from pathnas.deploy.toolkit import regress_bundle
    from pathnas.io import read_json
    from pathnas.profiling import load_profile

    if model.is_dir():  # a bundle names its model and its profile: the workstation toolkit's check
        if device is not None:
            raise ConfigError("--device is for model files; a bundle runs on the profile it was packaged for")
        code = regress_bundle(model, baseline, tolerance, confidence, rounds, junit, update_baseline, as_json)
        if code:
            raise typer.Exit(code)
        return
    if not model.is_file():
        raise MissingFileError(f"model {model} does not exist")
    if baseline is None:
        raise ConfigError("--baseline FILE is needed for a model file (a bundle carries its own)")
    hw = RunSettings.of(load_profile(device or "cpu"))
    if update_baseline:
        fresh = make_baseline(model, hw, measure_samples(model, hw, rounds))
        save_baseline(baseline, fresh)
        console.print(f"baseline written to {baseline}: median {fresh['median_ms']:.3f} ms", markup=False)
        return
    start = time.perf_counter()
    reference = read_json(baseline, "latency baseline", "measure one on this device with --update-baseline")
    verdict = check_regression(model, hw, reference, tolerance, confidence, rounds, str(baseline))
    if junit:
        write_junit(junit, f"{model.name}@{hw.name}", verdict, time.perf_counter() - start)
    if as_json:
        print_json({"model": str(model), "device": hw.name, **verdict.as_dict()})
    else:
        console.print(("[green]" if verdict.passed else "[red]") + verdict.summary())
    if not verdict.passed:
        raise typer.Exit(1)


COMMANDS = (package, verify, regress)
