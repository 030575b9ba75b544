"""`pathnas-edge profile measure | pack | assemble | calibrate`: a device's latency table.

One way to measure: a pack of ONNX parts and probe subnets made here, timed on the device with
the runtime install only (`pathnas-infer profile`), assembled here into the table. `measure` does
the three steps in one process (the device half here, or over SSH with --remote)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from pathnas.deploy.timing import TimingProtocol
from pathnas.errors import ConfigError
from pathnas.settings import RemoteDevice, SupernetChoice

from .common import JSON_HELP, chosen_supernet, console, on_interrupt, print_json
from .options import settings_options


class _MeasureByDefault(TyperGroup):
    """`pathnas-edge profile --device ...` (options, no subcommand) measures, as before the group existed."""

    def parse_args(self, ctx, args):
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h"):
            args = ["measure", *args]
        return super().parse_args(ctx, args)


profile_app = typer.Typer(cls=_MeasureByDefault, no_args_is_help=True,
                          help="Measure a device's latency table (here, over SSH, or through a pack), or "
                               "recalibrate one.")

DEVICE_HELP = "hardware profile name or alias (see hardware_profiles/)"
ROUNDS_HELP = (f"interleaved timing rounds (default {TimingProtocol.rounds}, "
               f"{TimingProtocol.repeats} samples per item and round: the tables' protocol)")
REUSE_HELP = "reuse the parts of this table (same device) whose module and shape are unchanged (repeatable)"


def _device_here(device: str, force: bool):
    from pathnas.profiling import load_profile

    hw = load_profile(device)
    if not hw.matches_here() and not force:
        raise ConfigError(
            f"this machine cannot measure {hw.name} ({hw.description}): run the command on that device, or "
            f"add --remote USER@DEVICE, or use `pathnas-edge profile pack` and `pathnas-infer profile` there "
            f"(--force measures here anyway, and the table will say which machine it really ran on)"
        )
    return hw


def _timed_on_a_device(command):
    """The options of a command that times a supernet's paths on a device: the space, and --remote."""
    command = settings_options(SupernetChoice, what="space", into="choice")(command)
    return settings_options(RemoteDevice, what="remote", into="device_link")(command)


def _remote(link: RemoteDevice):
    if link.remote is None:
        return None
    from pathnas.profiling.remote import Remote

    return Remote(link.remote, link.ssh_config, link.remote_infer).check()  # fail in seconds, before anything is exported


def _progress(as_json: bool):
    from pathnas.progress import progress_bar

    return progress_bar(console=console, transient=True, disable=as_json)


def _accuracy_line(acc: dict) -> str:
    return (f"RMSE {acc['rmse_ms']:.4f} ms, RMSPE {acc['rmspe_pct']:.2f}%, MAPE {acc['mape_pct']:.2f}%, within ±5% "
            f"{acc['within_5_pct']:.0f}%, ±10% {acc['within_10_pct']:.0f}%, ±15% {acc['within_15_pct']:.0f}%")


def _reused(hw, tables: list[Path]) -> dict:
    from pathnas.profiling.tables import load_table

    out: dict = {}
    for path in tables:
        table = load_table(path)
        if table["profile"] != hw.name:
            raise ConfigError(f"--reuse {path}: a table of device {table['profile']}, not {hw.name}")
        for key, entry in table["parts"].items():
            out.setdefault(key, {**entry, "reused_from": entry.get("reused_from") or str(path),
                                 "timed_at": entry.get("timed_at") or table["metadata"].get("date")})
    return out


def _report_table(table: dict, path: Path, as_json: bool, seconds: float | None = None) -> None:
    from pathnas.deploy.machine import busy_warning

    acc, meta = table["accuracy"], table["metadata"]
    if as_json:
        print_json({"table": str(path), "profile": table["profile"], "parts": len(table["parts"]),
                    "parts_timed": meta.get("parts_timed"), "parts_reused": meta.get("parts_reused"),
                    "overhead": table["overhead"], "accuracy": acc, "anchor": table.get("anchor"), "seconds": seconds})
        return
    reused = f", {meta['parts_reused']} reused" if meta.get("parts_reused") else ""
    console.print(f"latency table {path}: {len(table['parts'])} parts ({meta.get('parts_timed')} timed{reused}), "
                  f"{len(table['end_to_end'])} subnets ({table['overhead']['fit_subnets']} fit the overhead)"
                  + (f", {seconds:.0f} s" if seconds is not None else ""), markup=False)
    console.print(f"held-out accuracy on {acc['subnets']} subnets: {_accuracy_line(acc)}", markup=False)
    anchor = table.get("anchor")
    if anchor:
        spread = anchor["reference_spread_pct"]
        console.print(f"anchor: the reference model {anchor['reference_ms']:.4g} ms"
                      + (f" (spread ±{spread:.1f}%)" if spread is not None else "")
                      + f", timed with the parts; it promises ±{anchor['tolerance_pct']:.0f}% on a later day "
                      f"(check: pathnas-edge profile check {path})", markup=False)
    busy = busy_warning(meta.get("other_load_cores"))
    if busy:
        console.print(f"warning: {busy}", markup=False)


@profile_app.command("measure")
@_timed_on_a_device
def measure(
    choice: SupernetChoice,
    device_link: RemoteDevice,
    device: str = typer.Option(..., help=DEVICE_HELP),
    subnets: Optional[int] = typer.Option(None, min=4, help="random subnets measured end to end (default 40; 12 "
                                                            "when every part but a few is reused)"),
    fit_subnets: Optional[int] = typer.Option(None, min=1, help="of which fit the overhead model (default 10; 6 "
                                                                "when reusing); the rest are held out"),
    rounds: Optional[int] = typer.Option(None, min=1, help=ROUNDS_HELP),
    out: Optional[Path] = typer.Option(None, help="table file (default: the user's table folder, where the search "
                                                  "finds it: $PATHNAS_LATENCY_TABLES/<device>/<space>-<digest>.json)"),
    reuse: list[Path] = typer.Option([], help=REUSE_HELP),
    fresh: bool = typer.Option(False, "--fresh", help="time every part, reusing none from earlier tables"),
    force: bool = typer.Option(False, "--force", help="measure even if this machine does not match the profile"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Measure a device's latency table: pack, time (here, or on --remote over SSH), assemble.
    Parts an earlier table of this machine timed are reused (--fresh times all)."""
    import time

    from pathnas.profiling import load_profile
    from pathnas.profiling.measure import INCREMENTAL_FIT, INCREMENTAL_SUBNETS, measure_table, reusable_parts
    from pathnas.profiling.tables import save_table, table_filename, user_tables_dir

    link = _remote(device_link)
    hw = load_profile(device) if link else _device_here(device, force)
    net, _ = chosen_supernet(choice)
    parts = {} if fresh else {**(reusable_parts(hw) if link is None else {}), **_reused(hw, reuse)}
    keys = {p.key for p in net.latency_parts()}
    incremental = len(keys & set(parts)) >= len(keys) / 2
    subnets = subnets or (INCREMENTAL_SUBNETS if incremental else 40)
    fit_subnets = fit_subnets or (INCREMENTAL_FIT if incremental else 10)
    on_interrupt("nothing was written: a table is saved only once every part is measured")
    start = time.perf_counter()
    with _progress(as_json) as bar:
        table = measure_table(net, hw, subnets=subnets, fit_subnets=fit_subnets, rounds=rounds, progress=bar,
                              reuse=parts, remote=link)
    path = out or user_tables_dir(hw) / table_filename(table["space_config"])
    save_table(table, path)
    _report_table(table, path, as_json, time.perf_counter() - start)


@profile_app.command("pack")
@settings_options(SupernetChoice, what="space")
def pack(
    choice: SupernetChoice,
    device: str = typer.Option(..., help=DEVICE_HELP),
    out: Path = typer.Option(..., help="the pack folder to write (copy it to the device)"),
    subnets: int = typer.Option(40, min=4, help="random subnets to time end to end"),
    fit_subnets: int = typer.Option(10, min=1, help="of which fit the overhead model (the rest are held out)"),
    rounds: Optional[int] = typer.Option(None, min=1, help=ROUNDS_HELP),
    reuse: list[Path] = typer.Option([], help=REUSE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Export every part and probe subnet as ONNX into a pack for the device (step 1 of 3; then
    `pathnas-infer profile PACK` there, then `pathnas-edge profile assemble` here)."""
    from pathnas.deploy.bundle import write_zip, zip_path
    from pathnas.errors import AlreadyExistsError
    from pathnas.profiling import load_profile
    from pathnas.profiling.pack import plan_table, write_pack

    hw = load_profile(device)
    net, _ = chosen_supernet(choice)
    archive = zip_path(out)  # one file to copy to the device, as a bundle has
    if archive.exists():
        raise AlreadyExistsError(f"{archive} already exists; choose another --out (or remove it)")
    items, reused = plan_table(net, subnets, fit_subnets, 0, _reused(hw, reuse))
    on_interrupt("nothing was written: the pack appears only once every file is exported")
    with _progress(as_json) as bar:
        task = bar.add_task(f"exporting for {hw.name}", total=len(items))
        write_pack(net, hw, items, out, reused, timing=TimingProtocol().but(rounds=rounds),
                   advance=lambda: bar.advance(task))
    write_zip(out, archive)
    timings = out.parent / f"{out.name}.timings.json"
    if as_json:
        print_json({"pack": str(out), "zip": str(archive), "profile": hw.name, "items": len(items),
                    "parts_reused": len(reused)})
        return
    console.print(f"pack {out} and {archive.name}: {len(items)} ONNX files for {hw.name}"
                  + (f" ({len(reused)} parts reused)" if reused else ""), markup=False)
    console.print(f"next, on the device ({hw.description}), with the folder (or `unzip {archive.name} -d {out.name}`):\n"
                  f"  pathnas-infer profile {out.name} --out {timings.name}\n"
                  f"then here:\n  pathnas-edge profile assemble {out} {timings} --out TABLE.json", markup=False)


@profile_app.command("assemble")
def assemble(
    pack_dir: Path = typer.Argument(..., metavar="PACK", help="the pack made by `profile pack`"),
    timings: Path = typer.Argument(..., help="the timings `pathnas-infer profile` wrote on the device"),
    out: Optional[Path] = typer.Option(None, help="table file (default: the user's table folder)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The table from a pack and the device's timings, with its accuracy on held-out subnets (step 3 of 3)."""
    from pathnas.profiling import load_profile
    from pathnas.profiling.measure import assemble_files
    from pathnas.profiling.tables import save_table, table_filename, user_tables_dir

    table = assemble_files(pack_dir, timings)
    path = out or user_tables_dir(load_profile(table["profile"])) / table_filename(table["space_config"])
    save_table(table, path)
    mismatch = table["metadata"].get("device_mismatch")
    if mismatch and not as_json:
        console.print(f"note: the timings come from a machine that differs from {table['profile']}: "
                      f"{'; '.join(mismatch)}", markup=False)
    _report_table(table, path, as_json)


@profile_app.command("calibrate")
@_timed_on_a_device
def calibrate(
    choice: SupernetChoice,
    device_link: RemoteDevice,
    table: Optional[Path] = typer.Option(None, help="the table to recalibrate (default: the device's installed "
                                                    "table for this configuration)"),
    device: str = typer.Option(..., help=DEVICE_HELP),
    from_table: Optional[Path] = typer.Option(None, "--from", help="transfer: another device's table, whose parts "
                                                                    "are fitted to this device from a few probes"),
    out: Path = typer.Option(..., help="the recalibrated table (use it with search --latency-table)"),
    subnets: int = typer.Option(10, min=3, help="K: unseen subnets timed end to end now, which the fit uses"),
    holdout: int = typer.Option(8, min=0, help="further unseen subnets, timed with them, that judge the fit "
                                               "(Spearman, share within ±10%, before and after)"),
    rounds: Optional[int] = typer.Option(None, min=1, help=ROUNDS_HELP),
    force: bool = typer.Option(False, "--force", help="time even if this machine does not match the profile"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Time a few unseen subnets now and refit the table's overhead model (few-shot, as HELP does);
    reports the error before and after on paths the fit did not see. With --from, a table of
    another device is brought to this one the same way (LitePred's transfer)."""
    from pathnas.profiling import load_profile
    from pathnas.profiling.calibrate import calibrate_table
    from pathnas.profiling.commands import missing_table_error
    from pathnas.profiling.tables import find_table, load_table, save_table

    if table and from_table:
        raise ConfigError("give --table (this device's table) or --from (another device's), not both")
    link = _remote(device_link)
    hw = load_profile(device) if link else _device_here(device, force)
    net, _ = chosen_supernet(choice)
    config = net.config.model_dump(mode="json")
    source = from_table or find_table(hw, config, table)
    if source is None:
        raise missing_table_error(hw, config)
    source_table = load_table(source)
    if not from_table and source_table["profile"] != hw.name:
        raise ConfigError(f"{source}: a table of device {source_table['profile']}, not {hw.name}; to fit another "
                          f"device's table to this one, pass it with --from")
    on_interrupt("nothing was written: the recalibrated table is saved once every subnet is timed")
    with _progress(as_json) as bar:
        calibrated = calibrate_table(source_table, net, hw, subnets=subnets, rounds=rounds, table_path=source,
                                     progress=bar, remote=link, holdout=holdout)
    save_table(calibrated, out)
    record = calibrated["calibration"]
    if as_json:
        print_json({"table": str(out), "source_table": str(source), "profile": hw.name,
                    **{k: record[k] for k in ("source_device", "seconds", "model", "factor", "loo_mape_pct", "before",
                                              "after", "usable", "subnets")}, "holdout": record.get("holdout"),
                    "overhead": calibrated["overhead"]})
        return
    kind = f"transferred from {record['source_device']}" if record["source_device"] != hw.name else "recalibrated"
    console.print(f"{kind} table {out} (from {source}): {subnets} unseen subnets timed in "
                  f"{record['seconds']:.0f} s; model {record['model']}"
                  + (f" (x{record['factor']:.3f})" if record["model"] == "scale" else ""), markup=False)
    console.print(f"before, on these subnets: {_accuracy_line(record['before'])}; Spearman "
                  f"{record['before']['spearman']:.2f}", markup=False)
    console.print(f"after (leave-one-out: each subnet predicted by a fit without it): "
                  f"{_accuracy_line(record['after'])}", markup=False)
    held = record.get("holdout")
    if held:
        console.print(f"on {held['subnets']} held-out subnets the fit never saw: Spearman "
                      f"{held['before']['spearman']:.2f} -> {held['after']['spearman']:.2f}, within ±10% "
                      f"{held['before']['within_10_pct']:.0f}% -> {held['after']['within_10_pct']:.0f}%", markup=False)
    if not record["usable"]:
        console.print(f"this fit is too poor to use: only {record['after']['within_10_pct']:.0f}% of unseen subnets "
                      f"within ±10%. Measure {hw.name}'s own table (pathnas-edge profile measure, or pack / "
                      f"pathnas-infer profile / assemble)", markup=False)
        return
    console.print(f"search with it: pathnas-edge search --device {hw.name} --latency-table {out} ...", markup=False)


@profile_app.command("check")
def check(
    table: Path = typer.Argument(..., metavar="TABLE", help="the latency table to hold to its word"),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " (default: the table's)"),
    paths: int = typer.Option(8, min=1, help="unseen paths timed interleaved with the reference model"),
    rounds: int = typer.Option(3, min=1, help="rounds, each in a process of its own"),
    force: bool = typer.Option(False, "--force", help="time even if this machine does not match the profile"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Does a table still hold here? Times the reference model interleaved with unseen paths, and reports the
    share within ±10% as stored, re-anchored by the reference and refitted, with the machine's load. Writes
    nothing: re-anchor in a search with --reanchor, refit with `profile calibrate`, or re-measure."""
    import torch

    from pathnas.profiling import load_table, predictor_for
    from pathnas.profiling.probe import check_table, probe_line
    from pathnas.spaces import build_supernet, config_from_dict

    stored = load_table(table)
    hw = _device_here(device or stored["profile"], force)
    torch.manual_seed(0)
    net = build_supernet(config_from_dict(stored["space_config"])).eval()  # the table says which space it times
    on_interrupt("nothing was written: `profile check` only reports")
    report = check_table(predictor_for(hw, net, table_path=table), paths, rounds)
    if as_json:
        print_json({"table": str(table), "profile": hw.name, **report})
        return
    load = report["other_load_cores"]
    console.print(f"{table} (measured {str(report['table_date'])[:10]}): {len(report['paths'])} unseen paths and the "
                  f"reference model timed in {report['seconds']:.0f} s; other programs used "
                  f"{'an unknown share of' if load is None else f'{load:.2f}'} CPU cores, load average "
                  f"{report['load_average']}", markup=False)
    for name, row in report["rows"].items():
        lo, hi = row["measured_over_predicted"]
        console.print(f"  {name:<11} ±10% {row['within_10_pct']:3.0f}%  MAPE {row['mape_pct']:5.1f}%  "
                      f"ρ {row['spearman']:5.2f}  measured/predicted {lo:.2f}-{hi:.2f}", markup=False)
    console.print(probe_line(report, table)[1], markup=False)


COMMANDS = ()
