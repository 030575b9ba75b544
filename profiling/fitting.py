"""The arithmetic of tables: the overhead fit, and the accuracy figures nn-Meter reports."""
from __future__ import annotations

import numpy as np


def accuracy_figures(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> dict:
    """nn-Meter's figures: RMSE, RMSPE and the share of predictions within ±5/10/15 %."""
    measured_ms, predicted_ms = np.asarray(measured_ms, dtype=float), np.asarray(predicted_ms, dtype=float)
    err = predicted_ms - measured_ms
    rel = np.abs(err) / measured_ms
    return {
        "subnets": int(measured_ms.size),
        "rmse_ms": float(np.sqrt(np.mean(err**2))),
        "rmspe_pct": float(100 * np.sqrt(np.mean((err / measured_ms) ** 2))),
        "mape_pct": float(100 * rel.mean()),
        "within_5_pct": float(100 * np.mean(rel <= 0.05)),
        "within_10_pct": float(100 * np.mean(rel <= 0.10)),
        "within_15_pct": float(100 * np.mean(rel <= 0.15)),
        "p90_error_pct": float(100 * np.percentile(rel, 90)),
    }


def spread_pct(rounds_ms) -> float | None:
    """An item's spread across its rounds (each in a process of its own): the standard error of its
    figure, in % (the EON Tuner's latency standard error), from the log of each round's median; None
    with fewer than two rounds."""
    values = np.log(np.asarray(rounds_ms or [], dtype=float))
    if values.size < 2:
        return None
    return round(float(100 * np.std(values, ddof=1) / np.sqrt(values.size)), 3)


def fit_overhead(parts_sum_ms: np.ndarray, measured_ms: np.ndarray) -> dict:
    """measured ≈ scale × (sum of parts) + offset, by least squares.

    The offset is the work between parts (concatenations, the runtime's per-call cost paid
    once instead of once per part); the scale absorbs what fusing the parts in one graph
    saves. With fewer than 3 subnets only the offset is fitted.
    """
    parts_sum_ms, measured_ms = np.asarray(parts_sum_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    if parts_sum_ms.size >= 3 and np.ptp(parts_sum_ms) > 0:
        scale, offset = np.polyfit(parts_sum_ms, measured_ms, 1)
        return {"model": "linear", "scale": float(scale), "offset_ms": float(offset)}
    return {"model": "offset", "scale": 1.0, "offset_ms": float(np.mean(measured_ms - parts_sum_ms))}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (continuous timings: no ties to treat)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size < 2:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
