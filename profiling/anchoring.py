"""What a search does with its table at the start, and what its run records of it.

Where this machine is the device, the search says in one line what differs from the state the table
was measured in (``probe.state_line``) and probes the table (``probe.probe_table``): busy, it says so;
quiet and off, one warning naming `profile check`. Neither changes the table. Only ``--reanchor``
scales it, by the reference model's time now / then from a quiet probe; the factor is recorded in
RUN/latency/anchor.json with the probe's report, and ``--resume`` (of this run) and ``--replay`` (of
a transcript, from its run's record) reuse the recorded factor instead of timing again, so a run is
reproduced whatever the machine's speed.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pathnas.errors import ConfigError
from pathnas.io import read_json, write_json_atomic

from .predictor import TablePredictor
from .probe import probe_line, probe_table, reanchored, state_line

log = logging.getLogger("pathnas.profiling")

LATENCY_DIR = "latency"  # in a run directory: the table a search measured, and its anchor record
ANCHOR_RECORD = "anchor.json"


def anchor_record_path(run_dir: Path) -> Path:
    return Path(run_dir) / LATENCY_DIR / ANCHOR_RECORD


def recorded_anchor(settings) -> tuple[bool, dict | None]:
    """(found, anchor): the anchor this run recorded (``--resume``), else the one the replayed transcript's
    run recorded (``--replay``); (False, None) when there is no record to reuse."""
    sources = ([anchor_record_path(settings.run_dir)] if settings.resume else []) + (
        [anchor_record_path(Path(settings.replay).parent)] if settings.replay else [])
    for path in sources:
        if path.is_file():
            record = read_json(path, "latency anchor record")
            anchor = record.get("anchor")
            if anchor is not None and not (isinstance(anchor, dict) and isinstance(anchor.get("factor"), (int, float))
                                           and anchor["factor"] > 0):
                raise ConfigError(f"{path}: 'anchor' must be null or a mapping with a positive 'factor'")
            return True, anchor
    return False, None


def anchor_search(predictor: TablePredictor, settings) -> dict:
    """Report the table's state and probe (where this machine is the device), apply the anchor the run
    recorded or, asked (``settings.reanchor``), the probe's; record it in the run. Returns the record."""
    line = state_line(predictor) if predictor.profile.matches_here() else None
    if line:
        log.warning(line)
    report = None
    if predictor.measures_here:
        report = probe_table(predictor)
        level, text = probe_line(report, predictor.table_path)
        log.log(level, text)
    found, anchor = recorded_anchor(settings)
    if not found and settings.reanchor:
        if report is None:
            raise ConfigError(f"--reanchor times the reference model on the device: this machine is not "
                              f"{predictor.profile.name}, or --no-measure-local keeps it from timing")
        anchor = reanchored(report)
        if anchor["factor"] == 1.0:
            log.warning("%s; the table is used as measured", anchor["why"])
    elif found and anchor:
        log.warning("reusing the run's recorded anchor: %s",
                    f"table of {str(anchor.get('table_date'))[:10]} × {anchor['factor']:.2f} by the reference")
    predictor.use_anchor(anchor)
    record = {"table": str(predictor.table_path) if predictor.table_path else None, "anchor": anchor,
              "probe": report, "state": line}
    path = anchor_record_path(settings.run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return record
