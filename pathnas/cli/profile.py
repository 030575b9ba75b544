"""`pathnas-edge profile`: measure a device's latency table, on the device."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathnas.errors import ConfigError

from .common import JSON_HELP, OPTION_HELP, SPACE_HELP, console, on_interrupt, print_json, resolve_supernet, space_knobs


def profile(
    device: str = typer.Option(..., help="hardware profile name or alias (see hardware_profiles/)"),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP),
    supernet: Optional[Path] = typer.Option(None, help="take the space configuration from this checkpoint"),
    input_size: Optional[int] = typer.Option(None),
    width_mult: Optional[float] = typer.Option(None),
    num_classes: Optional[int] = typer.Option(None),
    option: list[str] = typer.Option([], help=OPTION_HELP),
    subnets: int = typer.Option(40, min=4, help="random subnets measured end to end"),
    fit_subnets: int = typer.Option(10, min=1, help="of which fit the overhead model (the rest are held out)"),
    rounds: int = typer.Option(3, min=1, help="interleaved timing rounds (the fastest is kept)"),
    out: Optional[Path] = typer.Option(None, help="table file (default: latency-tables/<device>/<space>-<digest>.json)"),
    force: bool = typer.Option(False, "--force", help="measure even if this machine does not match the profile"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Measure a device's latency table. Run it ON the device (Jetson, workstation, this host)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pathnas.profiling import load_profile
    from pathnas.profiling.tables import measure_table, save_table, table_filename

    hw = load_profile(device)
    if not hw.runs_here() and not force:
        raise ConfigError(
            f"this machine cannot measure {hw.name} ({hw.description}): run the command on that device "
            f"(--force measures anyway, and the table will say which CPU it really ran on)"
        )
    net, _ = resolve_supernet(supernet, space, space_knobs(input_size, width_mult, num_classes, option))
    on_interrupt("nothing was written: a table is saved only once every part is measured")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=as_json) as bar:
        table = measure_table(net, hw, subnets=subnets, fit_subnets=fit_subnets, rounds=rounds, progress=bar)
    path = out or Path("latency-tables") / hw.name / table_filename(table["space_config"])
    save_table(table, path)
    acc = table["accuracy"]
    if as_json:
        print_json({"table": str(path), "profile": hw.name, "parts": len(table["parts"]),
                    "overhead": table["overhead"], "accuracy": acc})
        return
    console.print(f"[green]latency table[/green] {path}: {len(table['parts'])} parts, "
                  f"{len(table['end_to_end'])} subnets ({table['overhead']['fit_subnets']} fit the overhead)")
    console.print(f"held-out accuracy on {acc['subnets']} subnets: RMSE {acc['rmse_ms']:.4f} ms, RMSPE "
                  f"{acc['rmspe_pct']:.2f}%, MAPE {acc['mape_pct']:.2f}%, within ±5% {acc['within_5_pct']:.0f}%, "
                  f"±10% {acc['within_10_pct']:.0f}%, ±15% {acc['within_15_pct']:.0f}%")


COMMANDS = (profile,)
