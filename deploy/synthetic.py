"""Synthetic whole-slide TIFFs written the ways scanners write them, for tests and benchmarks. Torch-free.

The one writer of test slides (tests/test_slides.py, tests/test_deploy.py, benchmarks/runtime_path.py):
a square slide whose left ``tissue`` share of tile columns is H&E-pink tissue and the rest
glass, written tile by tile (memory stays bounded at any size), optionally
- compressed (``"jpeg"``, ``"jpeg2000"``, ``"zlib"``: JPEG and JPEG 2000 need imagecodecs),
- planar-separate RGB (one plane per colour, as some scanners and converters write),
- with a pyramid of ``levels`` halvings, as SubIFDs (``pyramid="subifds"``, tifffile/OME style) or
  as reduced-resolution pages (``pyramid="pages"``, what OpenSlide's generic TIFF reader takes),
- stating its resolution (``mpp``, microns per pixel at level 0) in the TIFF resolution tags.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PINK = (230, 150, 200)  # eosin-like: the tissue detector counts it
GLASS = 250


def _tiles(side: int, tile: int, tissue: float, planar: bool, seed: int):
    rng = np.random.default_rng(seed)
    pink = np.clip(rng.normal(PINK, 12, (tile, tile, 3)), 0, 255).astype(np.uint8)
    white = np.full((tile, tile, 3), GLASS, np.uint8)
    n = -(-side // tile)
    tissue_columns = int(n * tissue)
    if planar:  # all tiles of the red plane, then green, then blue
        for s in range(3):
            for _ in range(n):
                for tx in range(n):
                    yield (pink if tx < tissue_columns else white)[None, :, :, s]
    else:
        for _ in range(n):
            for tx in range(n):
                yield pink if tx < tissue_columns else white


def write_slide(path: str | Path, side: int = 4096, tile: int = 256, tissue: float = 0.25, levels: int = 1,
                pyramid: str = "subifds", mpp: float | None = None, compression: str | None = None,
                planar: bool = False, seed: int = 0) -> Path:
    """Write the slide (see the module docstring); level k is ``side >> k`` pixels wide."""
    import tifffile

    if pyramid not in ("subifds", "pages"):
        raise ValueError(f"pyramid {pyramid!r}: allowed values are subifds, pages")
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=side > 30000) as tw:
        for k in range(levels):
            size = side >> k
            options = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression=compression,
                           shape=(3, size, size) if planar else (size, size, 3),
                           planarconfig="separate" if planar else "contig")
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**k)
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0 and levels > 1 and pyramid == "subifds":
                options["subifds"] = levels - 1
            if k > 0:
                options["subfiletype"] = 1  # a reduced-resolution image of the one before
            tw.write(_tiles(size, tile, tissue, planar, seed), **options)
    return path
