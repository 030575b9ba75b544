"""GeoJSON that QuPath opens by drag and drop: tiles and segmentation masks as polygons. Torch-free.

Coordinates are level-0 (full-resolution) pixels, origin at the top left, x to the right and
y down, as QuPath and OpenSlide count them. Each classified tile is a feature with
``objectType`` tile, the predicted class as its ``classification`` and every class
probability as a measurement; a segmentation mask becomes one feature per class (background,
class 0, left out): a MultiPolygon of its regions with their holes (``objectType``
annotation). GeoJSON is plain JSON, so the standard library writes it; a slide's tiles are
streamed to the file one feature per line, never held in memory.

The mask's polygons follow pixel edges (not pixel centres, as marching squares and OpenCV's
contours do), so their area is exactly the mask's pixel count times the scale squared.
Pixels that touch only at a corner belong to separate regions (4-connectivity).
"""
from __future__ import annotations

import json
from typing import IO

import numpy as np

# Colours QuPath shows per class index (QuPath's own palette's first colours, then distinct ones).
PALETTE = [(150, 200, 150), (200, 0, 0), (0, 0, 180), (250, 200, 0), (160, 32, 240), (0, 180, 180),
           (255, 120, 0), (120, 80, 40)]


def _classification(labels: list[str], index: int) -> dict:
    return {"name": labels[index], "color": list(PALETTE[index % len(PALETTE)])}


def tile_feature(minx: float, miny: float, side: float, probs, labels: list[str]) -> dict:
    """One tile: a square polygon in level-0 pixels, its predicted class and its class probabilities."""
    x0, y0, x1, y1 = minx, miny, minx + side, miny + side
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {"objectType": "tile", "isLocked": True,
                           "classification": _classification(labels, int(np.argmax(probs))),
                           "measurements": {f"prob_{c}": round(float(p), 6) for c, p in zip(labels, probs)}}}


class FeatureWriter:
    """A FeatureCollection streamed to an open text file: ``add`` features, then ``close``."""

    def __init__(self, f: IO[str]):
        self.f, self.count = f, 0
        f.write('{"type": "FeatureCollection", "features": [\n')

    def add(self, feature: dict) -> None:
        self.f.write((",\n" if self.count else "") + json.dumps(feature, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        self.f.write("\n]}\n")


# -- masks to polygons ------------------------------------------------------------------------------

def _edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed pixel edges between the mask and the rest, the region on the right of each (y down):
    outer boundaries run clockwise on screen, holes the other way. Start vertex -> end vertices."""
    padded = np.pad(mask, 1)
    inside = padded[1:-1, 1:-1]
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # (neighbour offset, start corner, end corner) per side of pixel (r, c), corners as (dx, dy)
    sides = (((-1, 0), (0, 0), (1, 0)), ((0, 1), (1, 0), (1, 1)), ((1, 0), (1, 1), (0, 1)), ((0, -1), (0, 1), (0, 0)))
    h, w = mask.shape
    for (dr, dc), (sx, sy), (ex, ey) in sides:
        neighbour = padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        rows, cols = np.nonzero(inside & ~neighbour)
        for r, c in zip(rows.tolist(), cols.tolist()):
            out.setdefault((c + sx, r + sy), []).append((c + ex, r + ey))
    return out


def _rings(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed rings of pixel-edge vertices (first vertex not repeated), corners only."""
    edges = _edges(mask)
    rings = []
    while edges:
        start = next(iter(edges))
        ring, here, heading = [start], start, None
        while True:
            ends = edges[here]
            if len(ends) == 1 or heading is None:
                end = ends[0]
            else:  # two regions touch at this corner: turn right, staying on the pixel we follow
                right = (-heading[1], heading[0])
                end = next((e for e in ends if (e[0] - here[0], e[1] - here[1]) == right), ends[0])
            ends.remove(end)
            if not ends:
                del edges[here]
            heading, here = (end[0] - here[0], end[1] - here[1]), end
            if here == start:
                break
            ring.append(here)
        rings.append(_corners(ring))
    return rings


def _corners(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ring without the vertices where it goes straight on."""
    n = len(ring)
    keep = []
    for i, (x, y) in enumerate(ring):
        px, py = ring[i - 1]
        nx, ny = ring[(i + 1) % n]
        if (x - px) * (ny - y) - (y - py) * (nx - x) != 0:
            keep.append((x, y))
    return keep


def signed_area(ring) -> float:
    """Shoelace area: positive for outer boundaries (clockwise on screen, y down), negative for holes."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1])) / 2


def _contains(ring, point: tuple[float, float]) -> bool:
    """Even-odd ray casting (the point is never on an edge here: it is a pixel centre)."""
    xy = np.asarray(ring, np.float64)
    x, y = xy[:, 0], xy[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    px, py = point
    crosses = (y > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = x + (py - y) * (x2 - x) / (y2 - y)
    return bool(np.count_nonzero(crosses & (px < at)) % 2)


def mask_polygons(mask: np.ndarray) -> list[list[list[tuple[int, int]]]]:
    """The regions of a boolean mask as polygons (outer ring, then its holes), in pixel-edge coordinates."""
    outers, holes = [], []
    for ring in _rings(np.asarray(mask, bool)):
        (outers if signed_area(ring) > 0 else holes).append(ring)
    areas = [signed_area(r) for r in outers]
    boxes = np.array([(min(x for x, _ in r), min(y for _, y in r), max(x for x, _ in r), max(y for _, y in r))
                      for r in outers], np.float64).reshape(-1, 4)
    polygons = [[ring] for ring in outers]
    for hole in holes:
        # the centre of the region's pixel beside the hole's first edge (the region is on the edge's right)
        (x0, y0), (x1, y1) = hole[0], hole[1]
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        point = (x0 + dx * 0.5 - dy * 0.5, y0 + dy * 0.5 + dx * 0.5)
        around = np.nonzero((boxes[:, 0] < point[0]) & (point[0] < boxes[:, 2])
                            & (boxes[:, 1] < point[1]) & (point[1] < boxes[:, 3]))[0]
        owners = [i for i in around.tolist() if _contains(outers[i], point)]
        if owners:  # the innermost region around it
            polygons[min(owners, key=lambda i: areas[i])].append(hole)
    return polygons


def mask_features(mask: np.ndarray, labels: list[str], scale: float = 1.0, origin: tuple[float, float] = (0, 0),
                  background: int | None = 0) -> list[dict]:
    """One feature per class present in ``mask`` (class indices; ``background`` left out): a MultiPolygon
    in level-0 pixels (mask pixel edges times ``scale``, plus ``origin`` (x, y))."""
    features = []
    for index in np.unique(mask).tolist():
        if index == background or not 0 <= index < len(labels):
            continue
        polygons = mask_polygons(mask == index)

        def level0(ring):
            points = [[round(origin[0] + x * scale, 3), round(origin[1] + y * scale, 3)] for x, y in ring]
            return points + [points[0]]

        features.append({"type": "Feature",
                         "geometry": {"type": "MultiPolygon",
                                      "coordinates": [[level0(r) for r in polygon] for polygon in polygons]},
                         "properties": {"objectType": "annotation", "classification": _classification(labels, index),
                                        "measurements": {"area_px": round(float((mask == index).sum()) * scale ** 2, 3)}}})
    return features
