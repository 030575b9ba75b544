"""Image sources for the workstation runtime: whole images, streamed TIFF regions, slides. Torch-free.

A tiled or stripped TIFF is read segment by segment: only the tiles a region overlaps are
read from disk and decoded, so memory stays bounded however large the slide. OpenSlide
formats (.svs, .ndpi, .mrxs, .scn) go through openslide when it is installed.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SLIDE_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn"}


class InputError(Exception):
    """An input that cannot be used; the message names the file and why."""


def to_rgb(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (any integer depth) -> HxWx3 uint8."""
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) / max(float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else
                                                 float(array.max() or 1), 1.0) * 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


class TiffRegionReader:
    """Regions of the first page of a TIFF, decoding only the segments (tiles or strips) they touch."""

    def __init__(self, path: Path, cache_segments: int | None = None):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            self.page = self._tif.pages.first
            self.height, self.width = int(self.page.imagelength), int(self.page.imagewidth)
        except Exception as err:
            raise InputError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
        if self.page.is_tiled:
            self.seg_h, self.seg_w = int(self.page.tilelength), int(self.page.tilewidth)
        else:
            self.seg_h, self.seg_w = int(self.page.rowsperstrip or self.height), self.width
        self.per_row = -(-self.width // self.seg_w)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        # Tiles are read row by row: two rows of segments (the current one and the one a tile
        # straddling the boundary reaches into) serve every region without re-decoding.
        self._cache_size = cache_segments or 2 * self.per_row + 1

    def _segment(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        fh = self._tif.filehandle
        fh.seek(self.page.dataoffsets[index])
        data = fh.read(self.page.databytecounts[index])
        segment, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
        if segment is None:
            raise InputError(f"{self.path}: segment {index} could not be decoded")
        array = to_rgb(np.asarray(segment).reshape(segment.shape[-3:]))
        self._cache[index] = array
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return array

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w, 3), np.uint8)
        for sy in range(y // self.seg_h, min(-(-(y + h) // self.seg_h), -(-self.height // self.seg_h))):
            for sx in range(x // self.seg_w, min(-(-(x + w) // self.seg_w), self.per_row)):
                seg = self._segment(sy * self.per_row + sx)
                y0, x0 = sy * self.seg_h, sx * self.seg_w
                ys, xs = max(y, y0), max(x, x0)
                ye, xe = min(y + h, y0 + seg.shape[0], self.height), min(x + w, x0 + seg.shape[1], self.width)
                if ye > ys and xe > xs:
                    out[ys - y:ye - y, xs - x:xe - x] = seg[ys - y0:ye - y0, xs - x0:xe - x0]
        return out

    def thumbnail(self, max_side: int = 512) -> np.ndarray:
        """A small overview built region by region (never the whole image at full size)."""
        step = max(1, -(-max(self.height, self.width) // max_side))
        rows = []
        band = self.seg_h * max(1, step // self.seg_h)  # one row of segments at a time, a multiple of the step
        band = max(step, band - band % step)
        for y in range(0, self.height, band):
            h = min(band, self.height - y)
            # copy: a strided view would keep the whole full-resolution band alive
            rows.append(self.read_region(y, 0, h, self.width)[::step, ::step].copy())
        return np.concatenate(rows)

    def close(self) -> None:
        self._tif.close()


class ArrayRegionReader:
    """A decoded image (PNG/JPEG/BMP cannot be read partially) behind the same interface."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.height, self.width = array.shape[:2]

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w, 3), np.uint8)
        part = self.array[y:y + h, x:x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def thumbnail(self, max_side: int = 512) -> np.ndarray:
        step = max(1, -(-max(self.height, self.width) // max_side))
        return self.array[::step, ::step]

    def close(self) -> None:
        pass


class SlideRegionReader:
    """OpenSlide formats at level 0."""

    def __init__(self, path: Path):
        try:
            import openslide
        except ImportError:
            raise InputError(f"{path}: reading {Path(path).suffix} slides needs openslide-python") from None
        self.slide = openslide.OpenSlide(str(path))
        self.width, self.height = self.slide.dimensions

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return to_rgb(np.asarray(self.slide.read_region((x, y), 0, (w, h))))

    def thumbnail(self, max_side: int = 512) -> np.ndarray:
        return to_rgb(np.asarray(self.slide.get_thumbnail((max_side, max_side))))

    def close(self) -> None:
        self.slide.close()


def open_image(path: Path):
    """A region reader for any supported input; InputError naming the file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return SlideRegionReader(path)
    if suffix in (".tif", ".tiff"):
        return TiffRegionReader(path)
    try:
        with Image.open(path) as img:
            img.load()
            return ArrayRegionReader(to_rgb(np.asarray(img.convert("RGB") if img.mode in ("P", "CMYK", "YCbCr", "LA") else img)))
    except Exception as err:
        raise InputError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that look like stained tissue: saturated and not near-white (glass/background)."""
    rgb = tile.astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    saturation = (mx - mn) / np.maximum(mx, 1)
    return float(np.mean((saturation > 0.08) & (mx < 245)))


def tile_grid(height: int, width: int, tile: int, overlap: float):
    """Top-left corners of overlapping tiles covering the image (the last row/column is flush with the edge)."""
    stride = max(1, int(round(tile * (1 - overlap))))

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile + 1, stride))
        if s[-1] != n - tile:
            s.append(n - tile)
        return s

    xs = starts(width)
    for y in starts(height):  # a generator: a slide may have millions of tiles
        for x in xs:
            yield y, x
