"""The command lines a person is told to run: to measure a device's table (here, over SSH, or in
three steps through a pack), and to recalibrate one."""
from __future__ import annotations

import json
from pathlib import Path

from .profiles import HardwareProfile
from .tables import NoLatencyTableError, packaged_tables_dir, table_filename, user_tables_dir


def space_args(space_config: dict) -> list[str]:
    """The --space and knob options that rebuild this configuration (defaults left out)."""
    from pathnas.spaces import space_config as default_config

    defaults = default_config(space_config["space"]).model_dump(mode="json")
    args = [f"--space {space_config['space']}"]
    for key, value in space_config.items():
        if key == "space" or defaults.get(key) == value:
            continue
        if key == "input_size":
            args.append(f"--input-size {value}")
        elif key == "width_mult":
            args.append(f"--width-mult {value}")
        elif key == "num_classes":
            args.append(f"--num-classes {value}")
        else:
            args.append(f"--option '{key}={json.dumps(value, separators=(',', ':'))}'")
    return args


def profile_command(profile: HardwareProfile, space_config: dict, out: str | Path, remote: str | None = None) -> str:
    """The one command that measures the table this configuration needs (on the device, or over SSH)."""
    return " ".join([f"pathnas-edge profile measure --device {profile.name}", *space_args(space_config),
                     *([f"--remote {remote}"] if remote else []), f"--out {out}"])


def pack_commands(profile: HardwareProfile, space_config: dict, out: str | Path) -> list[str]:
    """The three steps for a device without the toolchain: pack here, time there, assemble here."""
    stem = Path(str(out)).name.removesuffix(".json")
    pack, timings = f"{stem}.pack", f"{stem}.timings.json"
    return [" ".join([f"pathnas-edge profile pack --device {profile.name}", *space_args(space_config), f"--out {pack}"]),
            f"pathnas-infer profile {pack} --out {timings}   # on the device (pip install pathnas-edge)",
            f"pathnas-edge profile assemble {pack} {timings} --out {out}"]


def calibrate_command(profile: HardwareProfile, space_config: dict, table: str | Path | None, out: str | Path) -> str:
    """The command that brings a table back in line with the device as it is now."""
    return " ".join([f"pathnas-edge profile calibrate --device {profile.name}", *space_args(space_config),
                     *([f"--table {table}"] if table else []), f"--out {out}"])


def missing_table_error(profile: HardwareProfile, space_config: dict) -> NoLatencyTableError:
    """What to run when no table exists and this machine cannot measure one: the three steps of a pack,
    or one command over SSH; never a figure made up."""
    name = table_filename(space_config)
    target = user_tables_dir(profile) / name
    steps = "\n".join(f"  {i}. {c}" for i, c in enumerate(pack_commands(profile, space_config, target), 1))
    return NoLatencyTableError(
        f"device {profile.name} has no measured latency table for this {space_config['space']} configuration, and "
        f"this machine is not that device ({profile.description}). Measure it with the device's runtime only:\n"
        f"{steps}\nor in one step over SSH (pathnas-infer installed on the device):\n"
        f"  {profile_command(profile, space_config, target, remote='USER@DEVICE')}\n"
        f"The search then finds it in {target.parent} ($PATHNAS_LATENCY_TABLES/{profile.name}; "
        f"{packaged_tables_dir(profile)} ships it), or pass --latency-table FILE. "
        f"--latency-source roofline gives a labelled estimate instead."
    )
