"""Commands on the core: synthetic data, supernet pretraining, inspecting and evaluating one path."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pathnas.errors import ConfigError
from pathnas.settings import PretrainConfig, SupernetChoice

from .common import (JSON_HELP, OPTION_HELP, SPACE_HELP, chosen_supernet, console, on_interrupt, print_json,
                     setting, space_knobs)
from .options import settings_options

data_app = typer.Typer(no_args_is_help=True, help="Generate and inspect data sets.")


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., help="folder to write the data set into"),
    task: str = typer.Option("classify", help="classify or segment"),
    n_per_class: int = typer.Option(60, min=3, help="images per class (segment: per grade)"),
    image_size: int = typer.Option(64, min=16, help="side of the square images in pixels"),
    seed: int = typer.Option(0),
) -> None:
    """Generate the deterministic synthetic H&E-like histology data set."""
    from pathnas.data import generate

    if task not in ("classify", "segment"):
        raise ConfigError(f"--task {task!r}: allowed values are classify, segment")
    summary = generate(out, task, n_per_class=n_per_class, image_size=image_size, seed=seed)
    console.print(f"[green]data set ready[/green] in {out}: {json.dumps(summary.get('counts', summary))}")


@data_app.command("pack")
def data_pack(
    source: Path = typer.Argument(..., help="image folder (class subfolders, or images/ + masks/)"),
    out: Path = typer.Option(..., "--out", help="folder to write the pack into (memory-mapped uint8 arrays)"),
    size: int = typer.Option(224, min=8, help="side of the square tiles stored, in pixels"),
    seed: int = typer.Option(0, help="seed of the splits, if the folder has none yet"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip unreadable images and report how many"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Decode every image once into a pack that pretrain, evaluate and search read as they read the folder.

    Resumes where a killed pack stopped; run again on a finished pack, it verifies it by content hash."""
    from pathnas.data.shards import pack
    from pathnas.progress import progress_bar

    on_interrupt(f"the rows written are kept in {out}; run the same command again to continue")
    with progress_bar(console=console, disable=as_json) as bar:
        job = bar.add_task(f"packing {source.name}", total=None)
        summary = pack(source, out, size=size, seed=seed, skip_bad=skip_bad,
                       advance=lambda done, total: bar.update(job, completed=done, total=total))
    if as_json:
        print_json({"out": str(out), **summary})
        return
    state = "verified (content hashes match)" if summary["verified"] else "written"
    console.print(f"[green]pack {state}[/green]: {out}, {summary['task']}, {summary['size']} px tiles, "
                  f"splits {json.dumps(summary['split_sizes'])}"
                  + (f", {summary['skipped']} unusable file(s) skipped" if summary["skipped"] else ""))


@settings_options(PretrainConfig, ("data", "run_dir", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                                   "mixup_alpha", "cutmix_alpha", "eval_paths", "bn_images", "workers", "device", "seed",
                                   "max_steps_per_epoch", "skip_bad", "sampler"), what="pretraining", options={
    "data": {"help": "image folder (class subfolders) or images/ + masks/, or a pack of one (`data pack`)"},
    "run_dir": {"help": "where checkpoints and logs go"},
    "skip_bad": {"help": "skip unreadable images and report how many"}})
def pretrain(
    train_cfg: PretrainConfig,
    space: str = typer.Option("shufflenet", help=SPACE_HELP),
    input_size: Optional[int] = typer.Option(None, help="input side (default: the space's, 224)"),
    width_mult: Optional[float] = typer.Option(None, help="channel width multiplier"),
    option: list[str] = typer.Option([], help=OPTION_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the checkpoint in --run-dir"),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Pretrain a single-path one-shot supernet (SPOS). Use torchrun for several GPUs or nodes."""
    from pathnas.checkpoint import LAST_CHECKPOINT
    from pathnas.data import detect_task, list_classes
    from pathnas.spaces import space_config
    from pathnas.train import pretrain as run_pretrain

    data, run_dir = train_cfg.data, train_cfg.run_dir
    knobs = space_knobs(input_size, width_mult, None, option)
    task = detect_task(data)
    knobs.setdefault("num_classes", len(list_classes(data)) if task == "classify" else 2)
    cfg = space_config(space, **knobs)
    on_interrupt(f"every finished epoch is saved in {run_dir / LAST_CHECKPOINT}; continue with the same command and "
                 f"--resume")
    result = run_pretrain(cfg, train_cfg, resume=resume, progress=not no_progress)
    if result.history:
        console.print(f"[green]supernet trained[/green]: {run_dir}/last.pt, best: {run_dir}/best.pt")


@settings_options(SupernetChoice, what="space")
def inspect(
    choice: SupernetChoice,
    arch: str = typer.Option(..., help="compact code or comma-separated choices (e.g. 3,5,7,id,...)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Parameters, FLOPs (fvcore) and a per-layer table of one architecture."""
    from rich.table import Table

    from pathnas.cost import measure_cost

    net, _ = chosen_supernet(choice)
    parsed = net.check(arch)
    cfg = net.config
    cost = measure_cost(net.extract(parsed), (1, cfg.in_chans, cfg.input_size, cfg.input_size))
    if as_json:
        print_json({"space": cfg.space, "arch": parsed.code, "arch_explicit": parsed.explicit(),
                    "space_config": cfg.model_dump(mode="json"), **cost.as_dict()})
        return
    table = Table(title=f"{cfg.space} {parsed.code}")
    for col in ("layer", "kind", "output", "params", "MFLOPs"):
        table.add_column(col, justify="right" if col in ("params", "MFLOPs") else "left", overflow="fold")
    for row in cost.layers:
        table.add_row(row.name, row.kind, "x".join(map(str, row.output_shape)), f"{row.params:,}",
                      f"{row.flops / 1e6:.2f}")
    table.add_section()
    table.add_row("total", "", "", f"{cost.params:,}", f"{cost.flops / 1e6:.2f}")
    console.print(table)
    console.print(f"choices: {parsed.explicit()}", soft_wrap=True, markup=False)
    console.print(f"input {cost.input_shape}; FLOPs convention: {cost.flops_convention}", markup=False)


def evaluate(
    supernet: Path = typer.Option(..., help="supernet checkpoint (last.pt / best.pt)"),
    data: Path = typer.Option(..., help="the data set the supernet was trained on (image folder or pack)"),
    arch: str = typer.Option(..., help="compact code or comma-separated choices"),
    bn_images: int = setting(PretrainConfig, "bn_images"),
    batch_size: int = typer.Option(64, min=1),
    device: str = setting(PretrainConfig, "device", help="auto, cpu or cuda"),
    skip_bad: bool = typer.Option(False, "--skip-bad"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Validation metrics of one path with inherited weights and BN recalibration."""
    from pathnas.data import build_loaders
    from pathnas.train import evaluate_architecture, load_supernet
    from pathnas.train.distributed import resolve_device

    net, _ = load_supernet(supernet)
    parsed = net.check(arch)
    dev = resolve_device(device)
    loaders = build_loaders(data, net.config.input_size, batch_size, skip_bad=skip_bad)
    metrics = evaluate_architecture(net.to(dev), parsed, loaders.calib, loaders.val, loaders.num_classes, dev,
                                    bn_images)
    result = {"arch": parsed.code, "split": "val", **metrics}
    if as_json:
        print_json(result)
    else:
        console.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


COMMANDS = (pretrain, inspect, evaluate)
