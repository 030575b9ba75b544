"""GeoJSON that QuPath opens: tiles in level-0 pixels with their class and probabilities, and segmentation
masks as polygons whose area is the mask's. WSInfer's per-slide CSV says the same tiles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import bundle, read_csv, run_infer_here, write_slide  # noqa: F401 (a fixture)
from pathnas.deploy.geojson import mask_features, mask_polygons, signed_area


def _area(polygons) -> float:
    return sum(signed_area(ring) for polygon in polygons for ring in polygon)


def test_a_square_with_a_hole_and_an_island_in_it():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # a hole of 3 x 3
    mask[4, 4] = True  # an island inside the hole
    polygons = sorted(mask_polygons(mask), key=len)
    assert len(polygons) == 2
    island, square = polygons
    assert island == [[(4, 4), (5, 4), (5, 5), (4, 5)]]
    assert square[0] == [(1, 1), (8, 1), (8, 8), (1, 8)] and len(square) == 2  # outer ring, then the hole
    assert signed_area(square[0]) == 49 and signed_area(square[1]) == -9  # holes run the other way
    assert _area(polygons) == mask.sum() == 41


def test_pixels_touching_at_a_corner_are_separate_regions():
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True
    polygons = mask_polygons(mask)
    assert len(polygons) == 3 and all(len(p) == 1 and signed_area(p[0]) == 1 for p in polygons)


@pytest.mark.parametrize("seed", range(20))
def test_polygons_cover_exactly_the_mask(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(1, 40), rng.integers(1, 40))) < rng.random()
    assert _area(mask_polygons(mask)) == mask.sum()


def test_mask_features_are_level0_multipolygons_per_class():
    mask = np.zeros((10, 10), np.uint8)
    mask[:4, :4] = 1
    mask[6:, 5:] = 2
    features = mask_features(mask, ["background", "tumour", "stroma"], scale=8.0, origin=(100, 0))
    assert [f["properties"]["classification"]["name"] for f in features] == ["tumour", "stroma"]
    tumour = features[0]
    assert tumour["geometry"] == {"type": "MultiPolygon", "coordinates": [[[[100, 0], [132, 0], [132, 32], [100, 32],
                                                                            [100, 0]]]]}
    assert tumour["properties"]["objectType"] == "annotation" and tumour["properties"]["measurements"] == {
        "area_px": 16 * 64}
    stroma = features[1]["geometry"]["coordinates"]
    assert sum(signed_area(ring[:-1]) for polygon in stroma for ring in polygon) == pytest.approx((mask == 2).sum() * 64)


def test_tiles_in_level0_pixels_as_qupath_and_wsinfer_read_them(bundle, tmp_path):
    """The model saw 32 px at 2 um/px; a 0.5 um/px slide is read at its 4x level in tiles of 32 px, which
    cover 128 level-0 pixels, every 96 (25% overlap). Tissue is the left half (x < 1024)."""
    slide = write_slide(tmp_path / "fine.tif", side=2048, tile=128, tissue=0.5, levels=3, mpp=0.5)
    out = tmp_path / "out"
    code, err = run_infer_here(bundle, slide, "--out", out, "--min-tissue", "0.5")
    assert code == 0, err
    row = read_csv(out / "results.csv")[0]
    assert row["tile_px_level0"] == "128" and row["level"] == "2" and row["downsample"] == "4.0"
    geo = json.loads((out / "model-outputs-geojson" / "fine.geojson").read_text())  # valid JSON, whole
    assert row["geojson"] == str(out / "model-outputs-geojson" / "fine.geojson")
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == int(row["tissue_tiles"]) > 0
    labels = json.loads((bundle / "labels.json").read_text())
    first = geo["features"][0]
    assert first["type"] == "Feature" and first["geometry"] == {
        "type": "Polygon", "coordinates": [[[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]]}
    boxes = []
    for feature in geo["features"]:
        props = feature["properties"]
        ring = feature["geometry"]["coordinates"][0]
        (x0, y0), (x1, _), (_, y1) = ring[0], ring[1], ring[2]
        assert ring[0] == ring[-1] and x1 - x0 == y1 - y0 == 128
        assert x0 % 96 == 0 and y0 % 96 == 0 and x0 < 1024  # the grid, in level-0 pixels, tissue only
        assert props["objectType"] == "tile" and list(props["measurements"]) == [f"prob_{c}" for c in labels]
        probs = [props["measurements"][f"prob_{c}"] for c in labels]
        assert props["classification"]["name"] == labels[int(np.argmax(probs))]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        boxes.append((x0, y0, 128, 128, *probs))
    wsinfer_rows = read_csv(out / "model-outputs-csv" / "fine.csv")
    assert list(wsinfer_rows[0]) == ["minx", "miny", "width", "height", *(f"prob_{c}" for c in labels)]
    np.testing.assert_allclose([[float(r[k]) for k in wsinfer_rows[0]] for r in wsinfer_rows], boxes, atol=1e-6)
    tiles = read_csv(Path(row["tile_csv"]))
    assert [(int(t["x"]), int(t["y"])) for t in tiles] == [b[:2] for b in boxes]
