"""Synthetic whole-slide images with painted class regions and their annotations in QuPath GeoJSON, ASAP XML
and ImageScope XML: what `data tiles` and `pipeline --slides` are tested and demonstrated on.

Each slide is a tiled, pyramidal TIFF (levels halve, JPEG-free so colours are exact) stating its µm/px in
the TIFF resolution tags. Its regions are axis-aligned, with edges at 8 px past a multiple of 16 (level
0), so a pixel is wholly in or out of a region and a tile's centre never lies on an edge: the painted
label of every pixel is the truth a tile's label is checked against. Per slide (unit u = side / 8,
shifted by a seeded offset):
- Tumor: a square with a square hole (the hole is unannotated tissue);
- Stroma: an L that overlaps the Tumor square; Tumor owns the overlap (priority Tumor first, though the
  files list Stroma first);
- Necrosis: two rectangles, one MultiPolygon (left out of every fourth slide);
- Lymphoid: a rectangle (four classes: the demo space's installed latency tables are for four);
- unannotated tissue beside them, and glass around.
The pixels are generated tile by tile, so a slide of any size is written in bounded memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

CLASSES = ("Tumor", "Stroma", "Necrosis", "Lymphoid")
GLASS, OTHER_TISSUE = 0, len(CLASSES) + 1  # label values beside 1 + class index
COLOURS = np.array([(248, 248, 248), (110, 50, 150), (235, 150, 200), (200, 110, 110), (70, 60, 160), (190, 140, 180)],
                   np.float32)
PRIORITY = ("Tumor", "Stroma", "Necrosis", "Lymphoid")

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (level-0 px, pixel edges)


@dataclass(frozen=True)
class SyntheticSlide:
    """One slide's layout: its side (level 0) and its regions as rectangles per label (painted in order)."""

    name: str
    side: int
    offset: int
    necrosis: bool

    def _u(self, *units: float) -> list[int]:
        u = self.side // 8
        return [int(v * u) + self.offset for v in units]

    def paint_order(self) -> list[tuple[int, Rect]]:
        """(label, rectangle) painted in order: later ones cover earlier ones (the priority, reversed)."""
        rects: list[tuple[int, Rect]] = [(OTHER_TISSUE, tuple(self._u(5, 5, 7, 7)))]
        if self.necrosis:
            rects += [(3, tuple(self._u(1, 5, 3, 7))), (3, tuple(self._u(4, 6, 5, 7)))]
        rects += [(4, tuple(self._u(4, 2, 6, 4)))]
        rects += [(2, r) for r in self.stroma_rects()]
        rects += [(1, tuple(self._u(1, 1, 4, 4))), (OTHER_TISSUE, tuple(self._u(2, 2, 3, 3)))]  # Tumor, then its hole
        return rects

    def stroma_rects(self) -> list[Rect]:
        return [tuple(self._u(3, 1, 7, 2)), tuple(self._u(6, 1, 7, 5))]

    def labels(self, x0: int, y0: int, w: int, h: int, step: int = 1) -> np.ndarray:
        """Label of the pixels of a window (level-0 px; with ``step``, every step-th pixel's centre)."""
        xs = x0 + np.arange(w) * step + step // 2
        ys = y0 + np.arange(h) * step + step // 2
        out = np.zeros((h, w), np.uint8)
        for label, (a, b, c, d) in self.paint_order():
            cols = (xs >= a) & (xs < c)
            rows = (ys >= b) & (ys < d)
            if cols.any() and rows.any():
                out[np.ix_(rows, cols)] = label
        return out

    # -- annotations: the same regions in the three formats --------------------------------------------------

    def polygons(self) -> dict[str, list[list[list[tuple[int, int]]]]]:
        """Per class, polygons as rings (outer, then holes) in level-0 px, as a QuPath export holds them."""
        def ring(x0, y0, x1, y1):
            return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

        a, b, c, d = self._u(1, 1, 4, 4)
        ha, hb, hc, hd = self._u(2, 2, 3, 3)
        s = self._u(3, 1, 7, 2, 6, 5)
        out = {"Stroma": [[[(s[0], s[1]), (s[2], s[1]), (s[2], s[5]), (s[4], s[5]), (s[4], s[3]), (s[0], s[3])]]],
               "Tumor": [[ring(a, b, c, d), ring(ha, hb, hc, hd)[::-1]]]}
        if self.necrosis:
            out["Necrosis"] = [[ring(*self._u(1, 5, 3, 7))], [ring(*self._u(4, 6, 5, 7))]]
        out["Lymphoid"] = [[ring(*self._u(4, 2, 6, 4))]]
        return out

    def geojson(self) -> dict:
        features = []
        for name, polygons in self.polygons().items():  # Stroma first: file order must not decide the overlap
            closed = [[[list(p) for p in r] + [list(r[0])] for r in polygon] for polygon in polygons]
            geometry = ({"type": "Polygon", "coordinates": closed[0]} if len(closed) == 1
                        else {"type": "MultiPolygon", "coordinates": closed})
            features.append({"type": "Feature", "id": f"{self.name}-{name}", "geometry": geometry,
                             "properties": {"objectType": "annotation", "isLocked": False,
                                            "classification": {"name": name, "color": [200, 0, 0]}}})
        return {"type": "FeatureCollection", "features": features}

    def asap_xml(self) -> str:
        """ASAP has no holes: the Tumor square with its hole is written as the four rectangles of its frame."""
        a, b, c, d = self._u(1, 1, 4, 4)
        ha, hb, hc, hd = self._u(2, 2, 3, 3)
        frame = [(a, b, c, hb), (a, hd, c, d), (a, hb, ha, hd), (hc, hb, c, hd)]
        shapes = [("Stroma", self.polygons()["Stroma"][0][0])]
        shapes += [("Tumor", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]) for x0, y0, x1, y1 in frame]
        if self.necrosis:
            shapes += [("Necrosis", p[0]) for p in self.polygons()["Necrosis"]]
        shapes += [("Lymphoid", self.polygons()["Lymphoid"][0][0])]
        parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "<Annotations>"]
        for i, (group, points) in enumerate(shapes):
            parts.append(f'<Annotation Name="Annotation {i}" Type="Polygon" PartOfGroup={quoteattr(group)} '
                         f'Color="#F4FA58"><Coordinates>')
            parts += [f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(points)]
            parts.append("</Coordinates></Annotation>")
        parts += ["</Annotations>", "<AnnotationGroups>"]
        parts += [f'<Group Name={quoteattr(c)} PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>'
                  for c in CLASSES]
        parts += ["</AnnotationGroups>", "</ASAP_Annotations>"]
        return "\n".join(parts) + "\n"

    def imagescope_xml(self) -> str:
        parts = ['<?xml version="1.0" encoding="utf-8"?>', '<Annotations MicronsPerPixel="0.250000">']
        for i, (name, polygons) in enumerate(self.polygons().items()):
            parts.append(f'<Annotation Id="{i + 1}" Name={quoteattr(name)} ReadOnly="0" LineColor="65280">'
                         '<Attributes/><Regions><RegionAttributeHeaders/>')
            k = 0
            for polygon in polygons:
                for j, ring in enumerate(polygon):
                    k += 1
                    parts.append(f'<Region Id="{k}" Type="0" NegativeROA="{int(j > 0)}"><Vertices>')
                    parts += [f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in ring]
                    parts.append("</Vertices></Region>")
            parts.append("</Regions></Annotation>")
        parts.append("</Annotations>")
        return "\n".join(parts) + "\n"


def _tiles(slide: SyntheticSlide, level: int, tile: int, seed: int):
    size = slide.side >> level
    step = 1 << level
    for ty in range(0, size, tile):
        for tx in range(0, size, tile):
            labels = slide.labels(tx * step, ty * step, tile, tile, step)
            rng = np.random.default_rng([seed, level, ty, tx])
            pixels = COLOURS[labels] + rng.normal(0, 5, (tile, tile, 3)).astype(np.float32)
            yield np.clip(pixels, 0, 255).astype(np.uint8)


def write_slide(slide: SyntheticSlide, path: Path, mpp: float = 0.25, levels: int = 3, tile: int = 256,
                seed: int = 0, compression: str = "zlib") -> Path:
    """The slide as a tiled pyramidal TIFF (reduced-resolution pages) stating ``mpp`` at level 0; its tiles
    ``compression``: "zlib" (lossless: tests compare pixels) or "jpeg" (quality 80, as scanners' SVS files)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=slide.side > 30000) as tw:
        for k in range(levels):
            size = slide.side >> k
            per_cm = 1e4 / (mpp * 2**k)
            tw.write(_tiles(slide, k, tile, seed), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                     compression=compression, compressionargs={"level": 80} if compression == "jpeg" else None,
                     subfiletype=1 if k else 0)
    return path


def synthetic_slides(out: str | Path, n: int = 4, side: int = 1024, mpp: float = 0.25, seed: int = 0,
                     levels: int = 3, compression: str = "zlib") -> list[SyntheticSlide]:
    """``n`` slides in OUT/slides and their annotations in OUT/geojson, OUT/asap and OUT/imagescope."""
    if side % 128:
        raise ValueError(f"side {side}: a multiple of 128 (regions sit on a 16 px grid of units of side / 8)")
    out = Path(out)
    rng = np.random.default_rng(seed)
    slides = []
    for i in range(n):
        u = side // 8
        offset = 8 + 16 * int(rng.integers(0, max(1, u // 32)))
        slide = SyntheticSlide(f"slide{i:02d}", side, offset, necrosis=i % 4 != 3)
        write_slide(slide, out / "slides" / f"{slide.name}.tif", mpp, levels, seed=seed * 1000 + i,
                    compression=compression)
        for folder, suffix, text in (("geojson", ".geojson", json.dumps(slide.geojson(), indent=1)),
                                     ("asap", ".xml", slide.asap_xml()), ("imagescope", ".xml", slide.imagescope_xml())):
            (out / folder).mkdir(parents=True, exist_ok=True)
            (out / folder / f"{slide.name}{suffix}").write_text(text)
        slides.append(slide)
    return slides
