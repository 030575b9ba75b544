"""Bringing a latency table back in line with the machine as it is now: few-shot recalibration.

A table's parts are timed in one session. In a later session the same kind of machine can be
uniformly faster or slower (another host under the VM, other load, a runtime update): the
ranking of paths holds, the scale does not. (Issue 12: 24 unseen demo subnets re-timed later
were all overestimated, measured/predicted 0.70-0.72, Spearman 0.89-0.94.) As HELP adapts a
latency model to a device from about ten measurements, ``calibrate_table`` times a few unseen
subnets end to end now, with the table's own protocol, and refits the table's overhead model
on them; the parts stay as measured. Two models compete:

- ``scale``: every prediction times one factor, the median of measured / predicted (one
  parameter, robust to one disturbed path: the drift seen so far is of this kind);
- ``linear``: measured = a x (sum of parts) + b, fitted afresh (two parameters, for a drift
  that also changes the fixed cost per call).

Each is judged by leave-one-out over the calibration paths (every path predicted by the model
fitted on the others), the better one is kept, and the figures reported as "after" are those
leave-one-out predictions: errors on paths the fit did not see.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from pathnas.errors import ConfigError

from .profiles import HardwareProfile
from .fitting import accuracy_figures, spearman
from .pack import sample_archs

# Paths for calibration are drawn with another seed than measure_table's, and never one the
# table already measured end to end.
CALIBRATION_SEED = 1009
MODELS = ("scale", "linear")
# A recalibrated table is called fit to use when at least this share of the paths it did not see
# (leave-one-out) is predicted within ±10 %; below, the parts themselves do not rank like this device.
USABLE_WITHIN_10_PCT = 80.0


def _fit(model: str, parts_sum: np.ndarray, before: np.ndarray, measured: np.ndarray, overhead: dict) -> dict:
    """The overhead model (scale, offset_ms on the sum of parts) of ``model`` fitted on these paths."""
    if model == "scale":
        factor = float(np.median(measured / before))
        return {"scale": factor * overhead["scale"], "offset_ms": factor * overhead["offset_ms"], "factor": factor}
    scale, offset = np.polyfit(parts_sum, measured, 1)
    return {"scale": float(scale), "offset_ms": float(offset)}


def fit_calibration(parts_sum_ms, predicted_before_ms, measured_ms, overhead: dict) -> dict:
    """Choose and fit the recalibrated overhead model from paths timed now.

    ``parts_sum_ms``: each path's sum of table parts; ``predicted_before_ms``: the table's
    prediction for it; ``measured_ms``: its latency timed now; ``overhead``: the table's current
    model. Returns the chosen model with its scale and offset, the leave-one-out predictions
    of every model and their mean absolute percentage errors.
    """
    parts_sum, before, measured = (np.asarray(v, dtype=float) for v in (parts_sum_ms, predicted_before_ms, measured_ms))
    n = measured.size
    if n < 3:
        raise ConfigError(f"{n} calibration subnets: at least 3 are needed (one is left out in turn)")
    if not (np.all(measured > 0) and np.all(before > 0)):
        raise ConfigError("the table predicts a latency of zero or less for some of these paths (its overhead fit "
                          "is broken); measure a new table with `pathnas-edge profile measure` instead of "
                          "recalibrating this one")
    # The linear model needs spread in the sums of parts and at least 3 paths to fit on.
    models = [m for m in MODELS if m == "scale" or (n >= 4 and np.ptp(parts_sum) > 0)]
    loo: dict[str, list[float]] = {}
    for model in models:
        preds = []
        for i in range(n):
            keep = np.arange(n) != i
            fit = _fit(model, parts_sum[keep], before[keep], measured[keep], overhead)
            preds.append(fit["scale"] * parts_sum[i] + fit["offset_ms"])
        loo[model] = preds
    mape = {m: float(100 * np.mean(np.abs(np.array(p) - measured) / measured)) for m, p in loo.items()}
    # The simpler model wins unless the other is clearly better (by a tenth of its error).
    chosen = "linear" if "linear" in mape and mape["linear"] < 0.9 * mape["scale"] else "scale"
    return {"model": chosen, **_fit(chosen, parts_sum, before, measured, overhead),
            "loo_predicted_ms": loo[chosen], "loo_mape_pct": mape}


def calibrate_table(table: dict, supernet, profile: HardwareProfile, subnets: int = 10, rounds: int | None = None,
                    seed: int = CALIBRATION_SEED, table_path: Path | None = None, progress=None,
                    remote=None, holdout: int = 0) -> dict:
    """A copy of ``table`` whose overhead model is refitted to ``subnets`` paths timed on the device
    now (here, or on ``remote``; none of them a path the table measured), with a ``calibration``
    record: the paths, the before / after figures (after: leave-one-out), the time it took.

    ``table`` may come from another device (few-shot transfer, as HELP and LitePred do): its parts
    are kept as the other device timed them and only the overhead model is fitted to this one; the
    record says where the parts come from and whether the fit is good enough to use.

    ``holdout``: as many further paths, timed interleaved with the calibration paths and never used by
    the fit, judge it as HELP judges a transfer: Spearman's ρ and the share within ±10 % before / after."""
    from .measure import time_items
    from .pack import net_items
    from .predictor import TablePredictor

    if subnets < 3:
        raise ConfigError(f"--subnets {subnets}: at least 3")
    start = time.perf_counter()
    supernet = supernet.eval()
    source_device = table["profile"]
    table = {**table, "profile": profile.name}  # a transfer: the other device's parts, this device's fit
    predictor = TablePredictor(profile, supernet, table, table_path)  # checks the configuration
    drawn = sample_archs(supernet, subnets + holdout, seed, {r["arch"] for r in table.get("end_to_end", [])})
    archs, held = drawn[:subnets], drawn[subnets:]
    manifest, timings = time_items(profile, supernet, net_items(supernet, drawn, lambda j: "calibration" if j < subnets
                                                                else "holdout"),
                                   rounds, seed=seed, progress=progress, remote=remote)
    measured = np.array([timings["results"][f"net:{a.code}"]["median_ms"] for a in archs])
    parts_sum = np.array([predictor.parts_sum_ms(a) for a in archs])
    before = np.array([predictor.predict_ms(a) for a in archs])
    fit = fit_calibration(parts_sum, before, measured, table["overhead"])
    after_loo = np.array(fit["loo_predicted_ms"])
    seconds = time.perf_counter() - start
    calibrated = copy.deepcopy(table)
    calibrated["overhead"] = {"model": table["overhead"].get("model", "linear"), "scale": fit["scale"],
                              "offset_ms": fit["offset_ms"], "fit_subnets": table["overhead"].get("fit_subnets"),
                              "calibrated_on_subnets": subnets}
    after = {**accuracy_figures(measured, after_loo), "spearman": spearman(measured, after_loo)}
    calibrated["accuracy"] = {**accuracy_figures(measured, after_loo),
                              "method": "leave-one-out over the calibration subnets, timed in the calibration session"}
    if source_device != profile.name:
        calibrated["metadata"] = {**timings["metadata"], "parts_timed_on": {"device": source_device,
                                                                           **table["metadata"]}}
    calibrated["calibration"] = {
        "metadata": timings["metadata"],
        "source_table": str(table_path) if table_path else None,
        "source_device": source_device,
        "seconds": round(seconds, 2),
        "seed": seed,
        "model": fit["model"],
        "factor": fit.get("factor"),
        "loo_mape_pct": fit["loo_mape_pct"],
        "previous_overhead": table["overhead"],
        "previous_accuracy": table.get("accuracy"),
        "before": {**accuracy_figures(measured, before), "spearman": spearman(measured, before)},
        "after": after,
        "usable": after["within_10_pct"] >= USABLE_WITHIN_10_PCT,
        **({"holdout": _held_out(predictor, held, timings, fit)} if held else {}),
        "subnets": [
            {"arch": a.code, "measured_median_ms": float(m), "parts_sum_ms": float(p), "predicted_before_ms": float(b),
             "predicted_after_loo_ms": float(lo), "predicted_after_ms": fit["scale"] * float(p) + fit["offset_ms"]}
            for a, m, p, b, lo in zip(archs, measured, parts_sum, before, after_loo)
        ],
    }
    return calibrated


def _held_out(predictor, archs, timings: dict, fit: dict) -> dict:
    """Before / after on paths the fit never saw: Spearman's ρ, the share within ±10 % and the others."""
    measured = np.array([timings["results"][f"net:{a.code}"]["median_ms"] for a in archs])
    before = np.array([predictor.predict_ms(a) for a in archs])
    after = np.array([fit["scale"] * predictor.parts_sum_ms(a) + fit["offset_ms"] for a in archs])
    return {"subnets": len(archs),
            **{name: {**accuracy_figures(measured, p), "spearman": spearman(measured, p)}
               for name, p in (("before", before), ("after", after))}}
