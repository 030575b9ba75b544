"""Never stop a search for a table this machine could measure.

When the target device is this host (its profile matches this machine's CPU flags or GPU name)
and no table exists for the supernet's configuration, the table is measured here first, with a
progress bar, reusing every part an earlier table of this machine timed, and stored in the
run's directory (a run writes nothing outside it); the predictor says so in its note (search
summary and prompts). For any other device the error names the pack / profile / assemble
commands (or --remote) to run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from pathnas.progress import progress_bar

from .measure import INCREMENTAL_FIT, INCREMENTAL_SUBNETS, measure_table, reusable_parts
from .predictor import LatencyPredictor, TablePredictor, predictor_for
from .profiles import HardwareProfile, load_profile
from .tables import NoLatencyTableError, save_table, table_filename

log = logging.getLogger("pathnas.profiling")

# A table measured because a search needed it: fewer probes than `profile measure`'s 40, enough
# for the overhead fit and a held-out figure.
ON_DEMAND_SUBNETS, ON_DEMAND_FIT = 24, 8


def measure_missing_table(profile: HardwareProfile, supernet, path: Path) -> TablePredictor:
    """Measure this configuration's table here (this machine is the device), reusing every part a table
    of this machine already timed, store it at ``path`` and return its predictor. The one way a missing
    table is measured: for a search (into its run directory) and for the pipeline's profile stage (into
    RUN/latency). A run writes nothing outside its run directory: the shared table folders are only read."""
    config = supernet.config.model_dump(mode="json")
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
    predictor.note = (f"predicted from a latency table measured on this machine (the device) for this run, stored "
                      f"at {path}.")
    return predictor


def installed_predictor(profile: HardwareProfile, supernet, latency_source: str = "table", table_path=None,
                        measure_here: bool = False) -> LatencyPredictor | None:
    """The one place that decides between using a table and measuring it: the device's table (or the
    labelled estimate) when there is one; None when there is none and this machine is the device (so the
    caller measures it, ``measure_missing_table``); otherwise NoLatencyTableError naming the commands."""
    try:
        return predictor_for(profile, supernet, latency_source, table_path, measure_here)
    except NoLatencyTableError:
        if not profile.matches_here():
            raise
    return None


def predictor_measuring_if_missing(profile: HardwareProfile, supernet, store: Path, latency_source: str = "table",
                                   table_path=None, measure_here: bool = False) -> LatencyPredictor:
    """``predictor_for``, except that a missing table is measured first (this machine being the device) into
    the folder ``store`` (a search's run directory), where a resumed run finds it again."""
    stored = Path(store) / table_filename(supernet.config.model_dump(mode="json"))
    if table_path is None and latency_source == "table" and stored.is_file():
        table_path = stored
    predictor = installed_predictor(profile, supernet, latency_source, table_path, measure_here)
    if predictor is None:
        predictor = measure_missing_table(profile, supernet, stored)
        predictor.measures_here = measure_here and profile.matches_here()
    return predictor


def latency_factory(settings, profile: HardwareProfile | None = None) -> Callable[[object], LatencyPredictor]:
    """The search's latency source for a supernet space's settings (``device``, ``latency_source``,
    ``latency_table``, ``measure_local``, ``reanchor``, ``run_dir``, ``resume``, ``replay``): the
    device's table (measured into the run first if this machine is the device and has none), as
    measured, or re-anchored when asked (``anchoring.anchor_search``); where this machine is the device,
    checked against it and reported, never changed."""
    from .anchoring import LATENCY_DIR, anchor_search

    profile = profile or load_profile(settings.device)  # the caller's, when it has loaded it
    run_dir = Path(settings.run_dir)

    def make(supernet) -> LatencyPredictor:
        predictor = predictor_measuring_if_missing(profile, supernet, run_dir / LATENCY_DIR,
                                                   settings.latency_source, settings.latency_table,
                                                   settings.measure_local)
        if isinstance(predictor, TablePredictor):
            anchor_search(predictor, settings)
        return predictor

    return make
