"""`pathnas-edge`: the command-line toolchain."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .data import DataError
from .deploy.manifest import BundleError
from .spaces import SUPERNETS, Architecture, ArchitectureError, ConfigError, Supernet, build_supernet, space_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect data sets.")
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

# Errors caused by what the user asked for: printed as one clear line, exit code 2.
USER_ERRORS = (ArchitectureError, ConfigError, DataError, BundleError, FileNotFoundError, FileExistsError, ValueError)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)], force=True,
    )


def parse_options(options: list[str]) -> dict[str, Any]:
    """``--option key=value`` pairs; values are read as JSON where they parse (numbers, lists)."""
    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option embed_dim=192")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def space_knobs(input_size: Optional[int], width_mult: Optional[float], num_classes: Optional[int], options: list[str]):
    knobs = parse_options(options)
    for key, value in (("input_size", input_size), ("width_mult", width_mult), ("num_classes", num_classes)):
        if value is not None:
            knobs[key] = value
    return knobs


SPACE_HELP = f"search space: {', '.join(SUPERNETS)}"
OPTION_HELP = "extra space knob KEY=VALUE (repeatable), e.g. embed_dim=192 for vit"


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="folder to write the data set into"),
    task: str = typer.Option("classify", help="classify or segment"),
    n_per_class: int = typer.Option(60, min=3, help="images per class (segment: per grade)"),
    image_size: int = typer.Option(64, min=16, help="side of the square images in pixels"),
    seed: int = typer.Option(0),
) -> None:
    """Generate the deterministic synthetic H&E-like histology data set."""
    from .data import generate

    if task not in ("classify", "segment"):
        raise ConfigError(f"--task {task!r}: allowed values are classify, segment")
    summary = generate(out, task, n_per_class=n_per_class, image_size=image_size, seed=seed)
    console.print(f"[green]data set ready[/green] in {out}: {json.dumps(summary.get('counts', summary))}")


@app.command()
def pretrain(
    space: str = typer.Option("shufflenet", help=SPACE_HELP),
    data: Path = typer.Option(..., help="image folder (class subfolders) or images/ + masks/"),
    run_dir: Path = typer.Option(..., help="where checkpoints and logs go"),
    epochs: int = typer.Option(100, min=1),
    batch_size: int = typer.Option(64, min=2, help="per process"),
    lr: float = typer.Option(0.1),
    weight_decay: float = typer.Option(4e-5),
    warmup_epochs: float = typer.Option(1.0),
    mixup_alpha: float = typer.Option(0.8, help="timm mixup alpha (0 with --cutmix-alpha 0: no mixing)"),
    cutmix_alpha: float = typer.Option(1.0, help="timm cutmix alpha"),
    input_size: Optional[int] = typer.Option(None, help="input side (default: the space's, 224)"),
    width_mult: Optional[float] = typer.Option(None, help="channel width multiplier"),
    option: list[str] = typer.Option([], help=OPTION_HELP),
    eval_paths: int = typer.Option(2, help="random paths evaluated on val after each epoch"),
    bn_images: int = typer.Option(256, help="images for BN recalibration before evaluating a path"),
    workers: int = typer.Option(2, min=0),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    seed: int = typer.Option(0),
    max_steps_per_epoch: Optional[int] = typer.Option(None, help="cap steps per epoch (smoke runs)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unreadable images and report how many"),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --run-dir"),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Pretrain a single-path one-shot supernet (SPOS). Use torchrun for several GPUs or nodes."""
    from .data import detect_task, list_classes
    from .train import PretrainConfig, pretrain as run_pretrain

    knobs = space_knobs(input_size, width_mult, None, option)
    task = detect_task(data)
    knobs.setdefault("num_classes", len(list_classes(data)) if task == "classify" else 2)
    cfg = space_config(space, **knobs)
    train_cfg = PretrainConfig(
        data=data, run_dir=run_dir, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, eval_paths=eval_paths, bn_images=bn_images, workers=workers, device=device,
        seed=seed, skip_bad=skip_bad, max_steps_per_epoch=max_steps_per_epoch,
    )
    result = run_pretrain(cfg, train_cfg, resume=resume, progress=not no_progress)
    if result.history:
        console.print(f"[green]supernet trained[/green]: {run_dir}/last.pt, best: {run_dir}/best.pt")


def resolve_supernet(
    supernet: Optional[Path], space: Optional[str], knobs: dict[str, Any]
) -> tuple[Supernet, Optional[dict]]:
    if supernet is not None:
        from .train import load_supernet

        if knobs:
            raise ConfigError("--supernet fixes the space configuration; drop --input-size/--width-mult/--option")
        return load_supernet(supernet)
    if space is None:
        raise ConfigError(f"give --space ({', '.join(SUPERNETS)}) or --supernet CHECKPOINT")
    return build_supernet(space_config(space, **knobs)), None


@app.command()
def inspect(
    arch: str = typer.Option(..., help="compact code or comma-separated choices (e.g. 3,5,7,id,...)"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP),
    supernet: Optional[Path] = typer.Option(None, help="take the space configuration from this checkpoint"),
    input_size: Optional[int] = typer.Option(None),
    width_mult: Optional[float] = typer.Option(None),
    num_classes: Optional[int] = typer.Option(None),
    option: list[str] = typer.Option([], help=OPTION_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Parameters, FLOPs (fvcore) and a per-layer table of one architecture."""
    from .cost import measure_cost

    net, _ = resolve_supernet(supernet, space, space_knobs(input_size, width_mult, num_classes, option))
    parsed = net.check(arch)
    cfg = net.config
    cost = measure_cost(net.extract(parsed), (1, cfg.in_chans, cfg.input_size, cfg.input_size))
    if as_json:
        print(json.dumps({"space": cfg.space, "arch": parsed.code, "arch_explicit": parsed.explicit(),
                          "space_config": cfg.model_dump(mode="json"), **cost.as_dict()}, indent=2))
        return
    table = Table(title=f"{cfg.space} {parsed.code}  ({parsed.explicit()})")
    for col in ("layer", "kind", "output", "params", "MFLOPs"):
        table.add_column(col, justify="right" if col in ("params", "MFLOPs") else "left")
    for row in cost.layers:
        table.add_row(row.name, row.kind, "x".join(map(str, row.output_shape)), f"{row.params:,}", f"{row.flops / 1e6:.2f}")
    table.add_section()
    table.add_row("total", "", "", f"{cost.params:,}", f"{cost.flops / 1e6:.2f}")
    console.print(table)
    console.print(f"input {cost.input_shape}; FLOPs convention: {cost.flops_convention}")


@app.command()
def evaluate(
    supernet: Path = typer.Option(..., help="supernet checkpoint (last.pt / best.pt)"),
    data: Path = typer.Option(..., help="the data set the supernet was trained on"),
    arch: str = typer.Option(..., help="compact code or comma-separated choices"),
    bn_images: int = typer.Option(256, help="training images for BN recalibration"),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Validation metrics of one path with inherited weights and BN recalibration."""
    from .data import build_loaders
    from .train import evaluate_architecture, load_supernet
    from .train.distributed import resolve_device

    net, _ = load_supernet(supernet)
    parsed: Architecture = net.check(arch)
    dev = resolve_device(device)
    bundle = build_loaders(data, net.config.input_size, batch_size, skip_bad=skip_bad)
    metrics = evaluate_architecture(net.to(dev), parsed, bundle.calib, bundle.val, bundle.num_classes, dev, bn_images)
    result = {"arch": parsed.code, "split": "val", **metrics}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


@app.command()
def pipeline(
    run_dir: Path = typer.Option(Path("runs/demo"), help="the run directory (re-running resumes it)"),
    data: Optional[Path] = typer.Option(None, help="your data set (default: the synthetic histology set)"),
    device: str = typer.Option("cpu", help="target hardware profile"),
    proposer: str = typer.Option("auto", help="llm, llm-rank, evolution, random or auto"),
    iterations: int = typer.Option(10, min=1),
    budget_ms: Optional[float] = typer.Option(None, help="latency budget on the device (ms per image)"),
    budget_mflops: Optional[float] = typer.Option(None),
    pretrain_epochs: int = typer.Option(20, min=1),
    retrain_epochs: int = typer.Option(10, min=1),
    format: str = typer.Option("onnx,openvino,tensorrt"),
    precision: str = typer.Option("auto", help="comma-separated fp32, fp16, int8; auto: FP32 plus the "
                                  "device profile's precision"),
    seed: int = typer.Option(0),
) -> None:
    """Everything, on the embedded default unless told otherwise: data, supernet, latency table,
    search, extract, retrain, quantize, export, validate. Stages already done are skipped."""
    from .export.artifacts import FORMATS, PRECISIONS, parse_list
    from .export.report import print_report
    from .pipeline import run_pipeline

    precisions = None if precision == "auto" else tuple(parse_list(precision, PRECISIONS, "--precision"))
    summary = run_pipeline(run_dir, data, device, proposer, iterations, budget_ms, budget_mflops, pretrain_epochs,
                           retrain_epochs, tuple(parse_list(format, FORMATS, "--format")), precisions, seed)
    print_report(json.loads((run_dir / "validate" / "report.json").read_text()), console)
    best = summary["search"]
    key = summary["retrain"]["metric_name"]
    console.print(f"searched {best['arch']} for {summary['device']}: retrained test {key} "
                  f"{summary['retrain']['test'][key]:.2f}; everything is in {run_dir}")
    if not summary["validation_passed"]:
        raise typer.Exit(1)


# Each area keeps its commands beside its code and registers them here. Modules import
# their heavy dependencies inside the commands, so `pathnas-edge --help` stays fast.
COMMAND_MODULES = (
    "pathnas.profiling.commands",
    "pathnas.search.commands",
    "pathnas.export.commands",
    "pathnas.deploy.commands",
)


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if name == err.name or name.startswith(f"{err.name}."):  # area not built yet
                continue
            raise
        module.register(app)


_register_commands()


def main() -> None:
    import click

    _setup_logging(verbose=False)
    try:
        # Not standalone: so that user errors below become one clear line instead of a traceback.
        code = app(standalone_mode=False)
    except USER_ERRORS as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise SystemExit(2) from None
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except click.ClickException as err:  # usage errors: unknown option, bad value
        err.show()
        raise SystemExit(err.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
