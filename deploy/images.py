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
    """HxW, HxWx1, HxWx2, HxWx3 or HxWx4 (any integer depth) -> HxWx3 uint8.

    Alpha is composited onto white: transparent areas of an exported region are background
    (glass), and white is what the tissue detector skips.
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype != np.uint8:
        top = float(np.iinfo(array.dtype).max) if array.dtype.kind in "ui" else float(array.max() or 1)
        array = (array.astype(np.float32) / max(top, 1.0) * 255).astype(np.uint8)
    if array.shape[2] in (2, 4):  # gray+alpha, RGB+alpha
        alpha = array[..., -1:].astype(np.float32) / 255
        array = (array[..., :-1] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def conversion_note(channels: int) -> str:
    """What to_rgb did to an image with this many channels ('' when it was RGB)."""
    return {1: "grayscale converted to RGB", 2: "grayscale+alpha composited onto white",
            4: "RGBA: alpha composited onto white"}.get(channels, "")


class TiffRegionReader:
    """Regions of the first page (level 0) of a TIFF, decoding only the segments (tiles or strips) they touch."""

    def __init__(self, path: Path, cache_segments: int | None = None):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            self.page = self._tif.pages.first
            self.height, self.width = int(self.page.imagelength), int(self.page.imagewidth)
            self.note = conversion_note(int(self.page.samplesperpixel))
        except Exception as err:
            raise InputError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
        if self.page.is_tiled:
            self.seg_h, self.seg_w = int(self.page.tilelength), int(self.page.tilewidth)
        else:
            self.seg_h, self.seg_w = int(self.page.rowsperstrip or self.height), self.width
        self.per_row = -(-self.width // self.seg_w)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        # tile_grid visits tiles segment block by segment block, so a tile needs at most the 2 x 2
        # segments around its block, and the next block shares half of them: a few segments
        # serve every region, however wide the slide.
        self._cache_size = cache_segments or 8
        self.block = (self.seg_h, self.seg_w)

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

    def close(self) -> None:
        self._tif.close()


class ArrayRegionReader:
    """A decoded image (PNG/JPEG/BMP cannot be read partially) behind the same interface."""

    block = None

    def __init__(self, array: np.ndarray, note: str = ""):
        self.array, self.note = array, note
        self.height, self.width = array.shape[:2]

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w, 3), np.uint8)
        part = self.array[y:y + h, x:x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    def close(self) -> None:
        pass


class SlideRegionReader:
    """OpenSlide formats at level 0 (OpenSlide caches decoded tiles itself)."""

    note, block = "", None

    def __init__(self, path: Path):
        try:
            import openslide
        except ImportError:
            raise InputError(f"{path}: reading {Path(path).suffix} slides needs openslide-python") from None
        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as err:
            raise InputError(f"{path}: OpenSlide cannot read it ({type(err).__name__}: {err})") from None
        self.width, self.height = self.slide.dimensions

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return to_rgb(np.asarray(self.slide.read_region((x, y), 0, (w, h))))

    def close(self) -> None:
        self.slide.close()


def _decode_whole(path: Path) -> ArrayRegionReader:
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in ("P", "PA"):  # palette: expand, keeping transparency for compositing
            img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        array = np.asarray(img)
    channels = 1 if array.ndim == 2 else array.shape[2]
    note = conversion_note(channels) or ("" if mode == "RGB" else f"{mode} converted to RGB")
    return ArrayRegionReader(to_rgb(array), note)


def open_image(path: Path):
    """A region reader for any supported input; InputError naming the file when it cannot be read.

    Every reader has ``height``, ``width``, ``note`` (how the pixels were converted to RGB, or ''),
    ``block`` (the unit it decodes, (h, w), or None), ``read_region(y, x, h, w) -> HxWx3 uint8``
    and ``close()``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return SlideRegionReader(path)
    if suffix in (".tif", ".tiff"):
        return TiffRegionReader(path)
    try:
        return _decode_whole(path)
    except Exception as err:
        raise InputError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that look like stained tissue: saturation (max - min) / max above 0.08, and not
    near-white (max < 245; glass and background). Integer channel arithmetic: this runs on every tile."""
    r, g, b = tile[..., 0], tile[..., 1], tile[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    spread = (mx - np.minimum(np.minimum(r, g), b)).astype(np.uint16)
    return float(np.count_nonzero((spread * 25 > mx.astype(np.uint16) * 2) & (mx < 245))) / mx.size


def tile_grid(height: int, width: int, tile: int, overlap: float, block: tuple[int, int] | None = None):
    """Top-left corners of overlapping tiles covering the image (the last row/column is flush with the edge).

    With ``block`` (a reader's decoded unit), the tiles are visited block by block (row-major
    within and across blocks), so a streamed reader decodes each block about once while
    keeping only a few blocks in memory.
    """
    stride = max(1, int(round(tile * (1 - overlap))))

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile + 1, stride))
        if s[-1] != n - tile:
            s.append(n - tile)
        return s

    def groups(values: list[int], size: int) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for v in values:
            out.setdefault(v // size, []).append(v)
        return list(out.values())

    block_h, block_w = block or (height, width)
    column_groups = groups(starts(width), block_w)
    for ys in groups(starts(height), block_h):  # a generator: a slide may have millions of tiles
        for xs in column_groups:
            for y in ys:
                for x in xs:
                    yield y, x
