"""Never stop a search for a table this machine could measure.

When the target device is this host (its profile matches this machine's CPU flags or GPU name)
and no table exists for the supernet's configuration, the table is measured here first, with a
progress bar, reusing every part an earlier table of this machine timed, and stored in the
user's table folder; the predictor says so in its note (search summary and prompts). For any
other device the error names the pack / profile / assemble commands (or --remote) to run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from pathnas.progress import progress_bar

from .measure import INCREMENTAL_FIT, INCREMENTAL_SUBNETS, measure_table, reusable_parts
from .predictor import LatencyPredictor, TablePredictor, predictor_for
from .profiles import HardwareProfile, load_profile
from .tables import NoLatencyTableError, save_table, table_filename, user_tables_dir

log = logging.getLogger("pathnas.profiling")

# A table measured because a search needed it: fewer probes than `profile measure`'s 40, enough
# for the overhead fit and a held-out figure.
ON_DEMAND_SUBNETS, ON_DEMAND_FIT = 24, 8


def measure_missing_table(profile: HardwareProfile, supernet, path: Path | None = None) -> TablePredictor:
    """Measure this configuration's table here (this machine is the device), reusing every part a table
    of this machine already timed; store it at ``path`` (default: the user's table folder, where later
    measurements find its parts) and return its predictor. The one way a missing table is measured: for
    a search, and for the pipeline's profile stage (which keeps it in the run directory)."""
    config = supernet.config.model_dump(mode="json")
    path = path or user_tables_dir(profile) / table_filename(config)
    reuse = reusable_parts(profile)
    keys = {p.key for p in supernet.latency_parts()}
    incremental = len(keys & set(reuse)) >= len(keys) / 2
    subnets, fit = (INCREMENTAL_SUBNETS, INCREMENTAL_FIT) if incremental else (ON_DEMAND_SUBNETS, ON_DEMAND_FIT)
    log.warning("no %s latency table for this %s configuration: this machine is the device, so it is measured now "
                "(%s) and stored at %s", profile.name, config["space"],
                f"{len(keys & set(reuse))} of {len(keys)} parts reused" if incremental else "every part", path)
    with progress_bar(transient=True) as bar:
        table = measure_table(supernet, profile, subnets=subnets, fit_subnets=fit, progress=bar, reuse=reuse)
    save_table(table, path)
    acc = table["accuracy"]
    log.warning("latency table measured: %d parts timed, %d reused; held-out %d subnets within ±10%%: %.0f%%",
                table["metadata"]["parts_timed"], table["metadata"]["parts_reused"], acc["subnets"],
                acc["within_10_pct"])
    predictor = TablePredictor(profile, supernet, table, path)
    predictor.note = (f"predicted from a latency table measured on this machine (the device) at the start of this "
                      f"search, stored at {path}.")
    return predictor


def predictor_measuring_if_missing(profile: HardwareProfile, supernet, latency_source: str = "table",
                                   table_path=None, measure_here: bool = False) -> LatencyPredictor:
    """``predictor_for``, except that a missing table is measured first when this machine is the device."""
    try:
        return predictor_for(profile, supernet, latency_source, table_path, measure_here)
    except NoLatencyTableError:
        if not profile.runs_here():
            raise
    predictor = measure_missing_table(profile, supernet)
    predictor.measures_here = measure_here
    return predictor


def latency_factory(settings) -> Callable[[object], LatencyPredictor]:
    """The search's latency source for a supernet space's settings (``device``, ``latency_source``,
    ``latency_table``, ``measure_local``): the device's table, measured first if this machine is
    the device and has none; checked for drift (and recalibrated) here when it is."""
    profile = load_profile(settings.device)
    return lambda supernet: predictor_measuring_if_missing(
        profile, supernet, settings.latency_source, settings.latency_table, settings.measure_local).checked_here()
