"""The slide-level answers a pathologist reads: how much tissue, how much of it each class. Torch-free.

Counted on the slide's overview grid (overlay.py: every ``step``-th pixel of the level read,
painted from the tiles as they were read): the tissue is the overview's pixels the tissue
detector accepts, and each tissue pixel takes the class of the classified tiles over it (their
probabilities summed, overlapping tiles voting together); for a segmentation model, the mask's
class. An overview pixel stands for ``step x downsample`` level-0 pixels a side, so areas are in
mm² from the slide's own µm/px, and "unknown" where the slide states none (the shares are still
given: they need no resolution). Tissue under no classified tile (in tiles below --min-tissue)
is "unclassified". Per class, beside its area and share of the tissue: the mean and the 95th
percentile of its probability over the tissue tiles, and how many tiles it won.
"""
from __future__ import annotations

import numpy as np

UNKNOWN = "unknown"  # an area of a slide that states no resolution


def _mm2(pixels: int, pixel_mm2: float | None):
    return UNKNOWN if pixel_mm2 is None else round(pixels * pixel_mm2, 6)


def pixel_mm2(step: int, downsample: float, mpp: float | None) -> float | None:
    """Area of one overview pixel in mm² (``mpp``: the slide's level-0 µm/px; None: unknown)."""
    return None if mpp is None else (step * downsample * mpp / 1000) ** 2


def slide_answers(labels: list[str], per_tile: np.ndarray, tissue: np.ndarray, classes: np.ndarray,
                  area_mm2: float | None, segment: bool) -> tuple[dict, dict]:
    """(flat fields for the results row, the same per class for the per-slide JSON).

    ``per_tile``: tissue tiles x classes (probabilities, or a segmentation's per-tile class shares);
    ``tissue``: the overview's tissue pixels; ``classes``: each overview pixel's class, -1 for none
    (a segmentation's mask: its class, 0 the background)."""
    tissue_px = int(np.count_nonzero(tissue))
    # a mask's classes where the mask has them (the model drew them); a classifier's on the tissue only
    drawn = classes[classes >= 0] if segment else classes[tissue & (classes >= 0)]
    pixels = np.bincount(drawn, minlength=len(labels))
    base = tissue_px
    wins = np.bincount(per_tile.argmax(1), minlength=len(labels)) if len(per_tile) else np.zeros(len(labels), int)
    row: dict = {"tissue_mm2": _mm2(tissue_px, area_mm2)}
    nested: dict = {}
    shown = range(1, len(labels)) if segment else range(len(labels))
    for c in shown:
        name = labels[c]
        probs = per_tile[:, c] if len(per_tile) else np.zeros(0)
        entry = {"area_mm2": _mm2(int(pixels[c]), area_mm2),
                 "share_of_tissue": round(float(pixels[c]) / base, 6) if base else 0.0,
                 "mean_prob": round(float(probs.mean()), 6) if len(probs) else None,
                 "p95_prob": round(float(np.percentile(probs, 95)), 6) if len(probs) else None,
                 "tiles": int(wins[c])}
        nested[name] = entry
        row.update({f"area_mm2_{name}": entry["area_mm2"], f"share_{name}": entry["share_of_tissue"],
                    f"p95_{name}": entry["p95_prob"], f"tiles_{name}": entry["tiles"]})
    if not segment:
        unclassified = tissue_px - int(pixels.sum())
        row["unclassified_mm2"] = _mm2(unclassified, area_mm2)
        row["share_unclassified"] = round(unclassified / tissue_px, 6) if tissue_px else 0.0
    return row, nested
