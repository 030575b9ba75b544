"""Holding a table to its word on a later day: the reference model and a few paths, timed now.

A table describes the device running the model alone, on the day it was measured. It also timed a
small fixed reference model (profiling/reference.py) in the same rounds and processes as its parts
(its ``anchor``). Timing the reference again beside a few unseen paths tells apart what can happen
later:

- the machine is busy (other programs' CPU use during the timing, /proc/stat; the load average):
  nothing can be told, and nothing is changed;
- the reference and the paths agree with the table within its tolerance: it holds;
- the machine itself moved (another host under the VM, a power mode, a runtime update): the
  reference and the paths move together, and re-anchoring the table (its predictions times the
  reference's time now / then) brings it back; paths off while the reference is not mean the
  table itself is wrong for this machine: re-measure it.

This module checks and reports; it decides nothing. A search's start-up probe (``probe_table``)
leaves the table as measured, so a search decides the same on a quiet and on a busy machine; it
re-anchors only when asked (``--reanchor``), and the search records the factor in its run, which
``--resume`` and ``--replay`` reuse. `pathnas-edge profile check` (``check_table``) reports more
paths, with the share within ±10 % as stored, re-anchored and refitted. Nothing here writes a table.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from pathnas.deploy.machine import BUSY_CORES
from pathnas.errors import ConfigError

from .fitting import accuracy_figures, spearman
from .machine import machine_metadata
from .pack import REFERENCE, net_items, reference_item, sample_archs
from .predictor import TablePredictor

log = logging.getLogger("pathnas.profiling")

PROBE_SEED = 1010  # the probe's paths: a seed of their own, never a path the table measured
# A search's start-up probe times the reference model alone, 2 rounds (each in a process of its own): a few
# seconds. Paths cost their export (the shipped exporter, dynamo: ~5 s a demo path, ~25 s a 128 px one),
# so they are timed only where the table has no reference time, and by `profile check`.
PROBE_ROUNDS = 2
UNANCHORED_PROBE_PATHS = 2
CHECK_PATHS, CHECK_ROUNDS = 8, 3  # `profile check`
# An unanchored table (measured before tables timed the reference) is judged on its paths alone, with this.
UNANCHORED_TOLERANCE_PCT = 15.0
# The state a table's speed depends on, compared field by field with this machine's now.
STATE_FIELDS = ("cpu_model", "gpu", "runtime", "precision", "threads", "batch_size", "versions", "speed_state")


def probe_archs(predictor: TablePredictor, count: int, seed: int = PROBE_SEED) -> list:
    """``count`` fixed random paths the table did not measure end to end (any, in a space too small)."""
    measured = {r["arch"] for r in predictor.table.get("end_to_end", [])}
    try:
        return sample_archs(predictor.supernet, count, seed, measured)
    except ConfigError:
        return sample_archs(predictor.supernet, count, seed)


def time_probe(predictor: TablePredictor, archs: list, rounds: int) -> dict:
    """The paths and the reference model timed now, interleaved, each round in a process of its own (the
    tables' protocol, ``measure.time_items``); the timings record, with the other load during it."""
    from .measure import time_items

    items = net_items(predictor.supernet, archs, lambda j: "probe") + [reference_item()]
    _, timings = time_items(predictor.profile, predictor.supernet, items, rounds, seed=PROBE_SEED)
    return timings


def load_now() -> float | None:
    """The 1-minute load average, or None where the system does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def is_busy(other_load_cores: float | None, load_average: float | None) -> bool:
    """Busy: other programs used the CPU while this timed (/proc/stat); where that is not readable, a load
    average of a core or more (it counts this process too, so it is only the fallback)."""
    if other_load_cores is not None:
        return other_load_cores >= BUSY_CORES
    return load_average is not None and load_average >= 1.0


def judge(predictor: TablePredictor, archs: list, timings: dict, load_average: float | None = None,
          seconds: float | None = None) -> dict:
    """The report of a probe: each path's time now against the table's prediction (as measured), the
    reference's time now against the table's, the machine's load, and the verdict: ``busy``, ``holds``,
    ``machine-moved`` (the reference and the paths moved alike: re-anchor) or ``table-off`` (paths off
    while the reference is not: re-measure); ``unanchored`` tables are judged on their paths alone. With no
    paths (a search's start-up probe) the reference alone tells ``holds`` from ``machine-moved``."""
    table, results = predictor.table, timings["results"]
    anchor = table.get("anchor")
    paths = []
    for arch in archs:
        measured, predicted = results[f"net:{arch.code}"]["median_ms"], predictor.table_ms(arch)
        paths.append({"arch": arch.code, "measured_ms": measured, "predicted_ms": predicted,
                      "ratio": measured / predicted})
    path_ratio = float(np.exp(np.median(np.log([p["ratio"] for p in paths])))) if paths else None
    tolerance = (anchor or {}).get("tolerance_pct", UNANCHORED_TOLERANCE_PCT)
    other = (timings.get("metadata") or {}).get("other_load_cores")
    report = {"table_date": table["metadata"].get("date"), "paths": paths, "path_ratio": path_ratio,
              "tolerance_pct": tolerance, "other_load_cores": other, "load_average": load_average,
              "busy": is_busy(other, load_average), "seconds": None if seconds is None else round(seconds, 2),
              "reference_then_ms": None, "reference_now_ms": None, "reference_ratio": None}
    if anchor and REFERENCE in results:
        now = results[REFERENCE]["median_ms"]
        report.update(reference_then_ms=anchor["reference_ms"], reference_now_ms=now,
                      reference_ratio=now / anchor["reference_ms"])

    def off(ratio: float) -> bool:
        return abs(ratio - 1) * 100 > tolerance

    if report["busy"]:
        verdict = "busy"
    elif report["reference_ratio"] is None:
        if path_ratio is None:
            raise ConfigError("a latency table without a reference time is judged on paths: probe at least one")
        verdict = "unanchored-off" if off(path_ratio) else "unanchored-holds"
    elif path_ratio is None:
        verdict = "machine-moved" if off(report["reference_ratio"]) else "holds"
    elif not off(path_ratio) and not off(report["reference_ratio"]):
        verdict = "holds"
    elif not off(path_ratio / report["reference_ratio"]):
        verdict = "machine-moved"
    else:
        verdict = "table-off"
    report["verdict"] = verdict
    return report


def probe_table(predictor: TablePredictor, paths: int | None = None, rounds: int = PROBE_ROUNDS) -> dict:
    """A search's start-up probe: the reference timed now (and ``paths`` unseen paths; default none, or
    ``UNANCHORED_PROBE_PATHS`` for a table without a reference time); the report (``judge``)."""
    start = time.perf_counter()
    if paths is None:
        paths = 0 if predictor.table.get("anchor") else UNANCHORED_PROBE_PATHS
    archs = probe_archs(predictor, paths) if paths else []
    timings = time_probe(predictor, archs, rounds)
    return judge(predictor, archs, timings, load_now(), time.perf_counter() - start)


def check_command(table_path) -> str:
    return f"pathnas-edge profile check {table_path or 'TABLE'}"


def probe_line(report: dict, table_path) -> tuple[int, str]:
    """The one line a probe's report gives a person (its logging level and text): it names `profile check`
    whenever the table does not hold, and says the search uses the table as measured."""
    where = f"latency table {table_path or '(in memory)'} of {str(report['table_date'])[:10]}"
    said = [f"the reference model runs {report['reference_ratio']:.2f}x its time then"] \
        if report["reference_ratio"] is not None else []
    if report["path_ratio"] is not None:
        said.append(f"probe paths {report['path_ratio']:.2f}x their prediction")
    figures = f"{', '.join(said)} (tolerance ±{report['tolerance_pct']:.0f}%)"
    verdict = report["verdict"]
    if verdict == "busy":
        load = (f"other programs used {report['other_load_cores']:.2f} CPU cores"
                if report["other_load_cores"] is not None else f"load average {report['load_average']}")
        return logging.WARNING, (f"latency probe: this machine is busy ({load}) so its timings say nothing of the "
                                 f"device; {where} is used as measured")
    if verdict in ("holds", "unanchored-holds"):
        return logging.INFO, f"latency probe: {where} holds: {figures}"
    moved = "the machine itself moved (the reference with the paths)" if report["path_ratio"] is not None else \
        "the reference model's own time moved, so the machine itself did"
    advice = {"machine-moved": f"{moved}: --reanchor scales the table by the reference",
              "table-off": "the paths moved apart from the reference: re-measure the table",
              "unanchored-off": "the table has no reference time to tell the machine from the table"}[verdict]
    return logging.WARNING, (f"{where} is off on this machine now: {figures}; {advice}. The search uses it as "
                             f"measured. Check it: {check_command(table_path)}")


def reanchored(report: dict) -> dict:
    """The anchor a search asked to re-anchor records: the reference's time now / then, from a quiet probe."""
    if report["reference_ratio"] is None:
        raise ConfigError("--reanchor: this latency table has no reference time (it was measured before tables "
                          "timed the reference model); re-measure it with `pathnas-edge profile measure`")
    if report["busy"]:
        return {"factor": 1.0, "why": "not re-anchored: the machine was busy during the probe",
                "table_date": report["table_date"]}
    return {"factor": round(report["reference_ratio"], 4), "table_date": report["table_date"],
            "reference_then_ms": report["reference_then_ms"], "reference_now_ms": report["reference_now_ms"],
            "why": "--reanchor: the reference model's time now / in the table"}


def state_differences(table: dict, now: dict) -> list[str]:
    """What the table's speed depends on that differs on this machine now (runtime and driver versions,
    threads, CPU governor and frequency limits, Jetson power mode and clocks), as short phrases."""
    then = table.get("metadata") or {}
    out = []
    for key in STATE_FIELDS:
        a, b = then.get(key), now.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub) and key in then:  # a table without the field says nothing of it
                    out.append(f"{sub} {a.get(sub, 'unrecorded')} then, {b.get(sub, 'unreadable')} now")
        elif key in then and a != b:
            out.append(f"{key} {a} then, {b} now")
    return out


def state_line(predictor: TablePredictor) -> str | None:
    """One line naming what differs between the machine the table was measured on and this one, and the
    command that checks it; None when nothing readable differs."""
    differs = state_differences(predictor.table, machine_metadata(predictor.profile))
    if not differs:
        return None
    return (f"latency table {predictor.table_path or '(in memory)'} was measured on another state of this machine: "
            f"{'; '.join(differs)}. Check it: {check_command(predictor.table_path)} (then --reanchor, or "
            f"re-measure with `pathnas-edge profile measure`)")


def check_table(predictor: TablePredictor, paths: int = CHECK_PATHS, rounds: int = CHECK_ROUNDS,
                seed: int = PROBE_SEED + 1) -> dict:
    """`profile check`: ``paths`` unseen paths timed interleaved with the reference; the probe's report plus,
    on those paths, the share within ±10 % as stored, re-anchored by the reference, and refitted
    (leave-one-out scale fit, as `profile calibrate` fits), with Spearman's ρ and measured / predicted."""
    from .calibrate import fit_calibration

    start = time.perf_counter()
    archs = probe_archs(predictor, paths, seed)
    timings = time_probe(predictor, archs, rounds)
    report = judge(predictor, archs, timings, load_now(), time.perf_counter() - start)
    measured = np.array([p["measured_ms"] for p in report["paths"]])
    stored = np.array([p["predicted_ms"] for p in report["paths"]])
    rows = {"stored": stored}
    if report["reference_ratio"] is not None:
        rows["re-anchored"] = stored * report["reference_ratio"]
    if len(archs) >= 3:
        rows["refitted"] = np.array(fit_calibration([predictor.parts_sum_ms(a) for a in archs], stored, measured,
                                                    predictor.table["overhead"])["loo_predicted_ms"])
    report["rows"] = {name: {**accuracy_figures(measured, predicted), "spearman": spearman(measured, predicted),
                             "measured_over_predicted": [float((measured / predicted).min()),
                                                         float((measured / predicted).max())]}
                      for name, predicted in rows.items()}
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
