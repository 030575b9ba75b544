"""`pathnas-edge profile measure | calibrate`: a device's latency table, measured on the device,
and brought back in line with it in a later session."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from pathnas.errors import ConfigError

from .common import JSON_HELP, OPTION_HELP, SPACE_HELP, console, on_interrupt, print_json, resolve_supernet, space_knobs


class _MeasureByDefault(TyperGroup):
    """`pathnas-edge profile --device ...` (options, no subcommand) measures, as before the group existed."""

    def parse_args(self, ctx, args):
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h"):
            args = ["measure", *args]
        return super().parse_args(ctx, args)


profile_app = typer.Typer(cls=_MeasureByDefault, no_args_is_help=True,
                          help="Measure a device's latency table on the device, or recalibrate one in a later session.")

DEVICE_HELP = "hardware profile name or alias (see hardware_profiles/)"
SUPERNET_HELP = "take the space configuration from this checkpoint"


def _device_here(device: str, force: bool):
    from pathnas.profiling import load_profile

    hw = load_profile(device)
    if not hw.runs_here() and not force:
        raise ConfigError(
            f"this machine cannot measure {hw.name} ({hw.description}): run the command on that device "
            f"(--force measures anyway, and the table will say which machine it really ran on)"
        )
    return hw


def _progress(as_json: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=as_json)


def _accuracy_line(acc: dict) -> str:
    return (f"RMSE {acc['rmse_ms']:.4f} ms, RMSPE {acc['rmspe_pct']:.2f}%, MAPE {acc['mape_pct']:.2f}%, within ±5% "
            f"{acc['within_5_pct']:.0f}%, ±10% {acc['within_10_pct']:.0f}%, ±15% {acc['within_15_pct']:.0f}%")


@profile_app.command("measure")
def measure(
    device: str = typer.Option(..., help=DEVICE_HELP),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP),
    supernet: Optional[Path] = typer.Option(None, help=SUPERNET_HELP),
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
    """Measure a device's latency table. Run it ON the device (Jetson, workstation, GPU machine, this host)."""
    from pathnas.profiling.tables import measure_table, save_table, table_filename

    hw = _device_here(device, force)
    net, _ = resolve_supernet(supernet, space, space_knobs(input_size, width_mult, num_classes, option))
    on_interrupt("nothing was written: a table is saved only once every part is measured")
    with _progress(as_json) as bar:
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
    console.print(f"held-out accuracy on {acc['subnets']} subnets: {_accuracy_line(acc)}")


@profile_app.command("calibrate")
def calibrate(
    device: str = typer.Option(..., help=DEVICE_HELP),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP),
    supernet: Optional[Path] = typer.Option(None, help=SUPERNET_HELP),
    input_size: Optional[int] = typer.Option(None),
    width_mult: Optional[float] = typer.Option(None),
    num_classes: Optional[int] = typer.Option(None),
    option: list[str] = typer.Option([], help=OPTION_HELP),
    table: Optional[Path] = typer.Option(None, help="the table to recalibrate (default: the device's installed "
                                                    "table for this configuration)"),
    out: Path = typer.Option(..., help="the recalibrated table (use it with search --latency-table)"),
    subnets: int = typer.Option(8, min=3, help="unseen subnets timed end to end now"),
    rounds: int = typer.Option(3, min=1, help="interleaved timing rounds (the fastest is kept)"),
    force: bool = typer.Option(False, "--force", help="time even if this machine does not match the profile"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Time a few unseen subnets now and refit the table's overhead model (few-shot, as HELP does);
    reports the error before and after on paths the fit did not see. Run it ON the device."""
    from pathnas.profiling.calibrate import calibrate_table
    from pathnas.profiling.tables import find_table, load_table, missing_table_error, save_table

    hw = _device_here(device, force)
    net, _ = resolve_supernet(supernet, space, space_knobs(input_size, width_mult, num_classes, option))
    config = net.config.model_dump(mode="json")
    source = find_table(hw, config, table)
    if source is None:
        raise missing_table_error(hw, config)
    on_interrupt("nothing was written: the recalibrated table is saved once every subnet is timed")
    with _progress(as_json) as bar:
        calibrated = calibrate_table(load_table(source), net, hw, subnets=subnets, rounds=rounds, table_path=source,
                                     progress=bar)
    save_table(calibrated, out)
    record = calibrated["calibration"]
    if as_json:
        print_json({"table": str(out), "source_table": str(source), "profile": hw.name,
                    **{k: record[k] for k in ("seconds", "model", "factor", "loo_mape_pct", "before", "after",
                                              "subnets")},
                    "overhead": calibrated["overhead"]})
        return
    console.print(f"[green]recalibrated table[/green] {out} (from {source}): {subnets} unseen subnets timed in "
                  f"{record['seconds']:.0f} s; model {record['model']}"
                  + (f" (x{record['factor']:.3f})" if record["model"] == "scale" else ""), markup=False)
    console.print(f"before, on these subnets: {_accuracy_line(record['before'])}; Spearman "
                  f"{record['before']['spearman']:.2f}", markup=False)
    console.print(f"after (leave-one-out: each subnet predicted by a fit without it): "
                  f"{_accuracy_line(record['after'])}", markup=False)
    console.print(f"search with it: pathnas-edge search --device {hw.name} --latency-table {out} ...", markup=False)


COMMANDS = ()
