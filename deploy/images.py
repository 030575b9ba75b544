"""Image sources for the workstation runtime: whole images, streamed TIFF regions, slides. Torch-free.

Every input opens as a *source* (``open_image``) with one or more resolution levels (a
pyramid), the resolution it states (microns per pixel, or None) and a region reader per level.
- TIFF (and SVS, SCN, NDPI when openslide is not installed) through tifffile: pyramids
  (SubIFDs or reduced-resolution pages), tiled or stripped, uncompressed, LZW, deflate, JPEG and
  JPEG 2000 (imagecodecs), planar-separate RGB; only the segments a region overlaps are read
  and decoded, so memory stays bounded however large the slide. A header that does not match
  the file (100000 x 100000 px with four tiles), or a segment too large to decode (an NDPI level
  stored as one JPEG: openslide reads those), is refused at open, naming the file.
- OpenSlide formats (.svs, .ndpi, .mrxs, .scn) through openslide when it is installed.
- PNG, JPEG, BMP through Pillow (decoded whole: they cannot be read in parts).
The resolution comes from OpenSlide's ``openslide.mpp-x``, Aperio's ``MPP =`` description,
OME-XML ``PhysicalSizeX``, TIFF resolution tags or an image's dpi; a value no scanner would
write (72 dpi, a screen default) counts as not stated. ``choose_level`` picks the level and
scale that match the resolution a model was trained at.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SLIDE_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn", ".dcm"}
DICOM = ".dcm"  # a DICOM slide is a folder of .dcm files, one per level: one input per folder
TIFF_SLIDES = {".svs", ".ndpi", ".scn"}  # TIFF inside: tifffile reads them when openslide is not installed
# Scanners write 0.1-2 um/px; beyond this range a stated resolution is a default, not a measurement.
PLAUSIBLE_MPP = (0.01, 50.0)
# A TIFF segment (tile or strip) is decoded whole: refuse one larger than this (a 100000 x 100000 strip).
MAX_SEGMENT_BYTES = 256 * 2**20
UNITS_UM = {"inch": 25400.0, "centimeter": 10000.0, "cm": 10000.0, "mm": 1000.0, "millimeter": 1000.0,
            "µm": 1.0, "um": 1.0, "micrometer": 1.0, "nm": 0.001, "nanometer": 0.001}


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


@dataclass(frozen=True)
class Level:
    """One resolution of a source: its size in pixels and its downsampling from level 0."""

    height: int
    width: int
    downsample: float


def plausible_mpp(value: float | None, where: str) -> tuple[float | None, str]:
    """(mpp, note): the value when a scanner could have written it, else None and why it was ignored."""
    if value is None:
        return None, ""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1]):
        return None, f"{where} says {value:.4g} µm/px, not a scanner's resolution (ignored)"
    return float(value), where


def choose_level(levels: list[Level], slide_mpp: float | None, target_mpp: float | None) -> tuple[int, float]:
    """(level, scale): read at ``level``, then shrink regions by ``scale`` (> 1; < 1 enlarges) so that a
    pixel covers ``target_mpp`` microns. The coarsest level not coarser than the target is chosen (never
    enlarging a level when a finer one exists); (0, 1.0) when either resolution is unknown."""
    if slide_mpp is None or target_mpp is None:
        return 0, 1.0
    wanted = target_mpp / slide_mpp  # downsampling from level 0
    finer = [i for i, level in enumerate(levels) if level.downsample <= wanted * 1.01]  # 1%: rounded level sizes
    index = max(finer, key=lambda i: levels[i].downsample) if finer else 0
    return index, wanted / levels[index].downsample


class Source:
    """An input image: its levels (level 0 is full resolution), stated resolution and region readers.

    A region reader has ``height``, ``width``, ``block`` (the unit it decodes, (h, w), or None) and
    ``read_region(y, x, h, w) -> HxWx3 uint8`` in that level's pixels. The source itself reads
    level 0 (``height``, ``width``, ``block``, ``read_region``).
    """

    path: Path
    note: str = ""  # how the pixels were converted to RGB ('' when they were RGB)
    mpp: float | None = None  # microns per pixel at level 0, None when the file states none
    mpp_source: str = ""  # where the resolution was read (or why a stated one was ignored)
    levels: list[Level]

    def reader(self, level: int = 0):  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def block(self):
        return self.reader(0).block

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.reader(0).read_region(y, x, h, w)

    def close(self) -> None:
        pass


# -- TIFF through tifffile ------------------------------------------------------------------------

def _tiff_error(path: Path, err: Exception) -> InputError:
    text = str(err)
    if "imagecodecs" in text:
        return InputError(f"{path}: {text}; install it with `pip install imagecodecs` (JPEG and JPEG 2000 "
                          "compressed slides need it)")
    return InputError(f"{path}: not a readable TIFF ({type(err).__name__}: {text})")


class TiffLevelReader:
    """Regions of one TIFF page (a pyramid level), decoding only the segments (tiles or strips) they touch.

    Safe to call from several threads (the reader pool of tiles.py): the file is read under a
    lock, and segments are decoded outside it (imagecodecs releases the GIL), in parallel.
    """

    def __init__(self, tif, page, path: Path, cache_segments: int = 16):
        self._tif, self.page, self.path = tif, page, Path(path)
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.samples = int(page.samplesperpixel)
        self.planar = self.samples > 1 and int(page.planarconfig) == 2  # separate planes: one segment per sample
        if page.is_tiled:
            self.seg_h, self.seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self.seg_h, self.seg_w = int(page.rowsperstrip or self.height) or self.height, self.width
        self.seg_h, self.seg_w = min(self.seg_h, self.height) or 1, min(self.seg_w, self.width) or 1
        self.per_row = -(-self.width // self.seg_w)
        self.per_plane = self.per_row * -(-self.height // self.seg_h)
        self._check_header()
        self._white = np.iinfo(page.dtype).max if np.dtype(page.dtype).kind in "ui" else 1.0
        self.invert = getattr(page.photometric, "name", "") == "MINISWHITE"
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        # tile_grid visits tiles segment block by segment block, so a tile needs at most the 2 x 2
        # segments around its block, and the next block shares half of them: a few segments
        # serve every region, however wide the slide (and the few blocks the reader threads
        # work on at once).
        self._cache_size = cache_segments
        self._lock = threading.Lock()
        self.block = (self.seg_h, self.seg_w)
        self._segment(0)  # decode one segment now: a missing codec or broken data fails at open

    def _check_header(self) -> None:
        """Refuse a header the file cannot back (IndexError or a huge allocation later otherwise)."""
        page, path = self.page, self.path
        expected = self.per_plane * (self.samples if self.planar else 1)
        offsets, counts = page.dataoffsets, page.databytecounts
        unit = "tile" if page.is_tiled else "strip"
        if len(offsets) != expected or len(counts) != expected:
            raise InputError(f"{path}: the TIFF header says {self.width}x{self.height} px in {expected} {unit}s of "
                             f"{self.seg_w}x{self.seg_h}, but the file lists {len(offsets)}: damaged or truncated")
        size = os.path.getsize(path)
        if any(n and o + n > size for o, n in zip(offsets, counts)):
            raise InputError(f"{path}: {unit} data lies beyond the end of the file ({size} bytes): truncated")
        segment_bytes = self.seg_h * self.seg_w * (1 if self.planar else self.samples) * np.dtype(page.dtype).itemsize
        if segment_bytes > MAX_SEGMENT_BYTES:
            raise InputError(f"{path}: one {unit} is {self.seg_w}x{self.seg_h} px ({segment_bytes / 2**20:.0f} MiB "
                             f"decoded), over {MAX_SEGMENT_BYTES // 2**20} MiB; save the slide as a tiled TIFF")
        if self.samples > 4:
            raise InputError(f"{path}: {self.samples} samples per pixel; expected gray, RGB or RGBA")

    def _plane(self, index: int) -> np.ndarray:
        """One decoded segment as (h, w, samples) of the page's dtype; a sparse (empty) one is white."""
        page = self.page
        count = page.databytecounts[index]
        h = min(self.seg_h, self.height - (index % self.per_plane) // self.per_row * self.seg_h)
        w = min(self.seg_w, self.width - (index % self.per_row) * self.seg_w)
        samples = 1 if self.planar else self.samples
        if not count:
            return np.full((self.seg_h, self.seg_w, samples), self._white, page.dtype)
        fh = self._tif.filehandle
        with self._lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(count)
        try:
            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as err:  # tifffile and imagecodecs raise their own types for bad data or a missing codec
            if "imagecodecs" in str(err):
                raise _tiff_error(self.path, err) from None
            unit = "tile" if page.is_tiled else "strip"
            y0, x0 = (index % self.per_plane) // self.per_row * self.seg_h, (index % self.per_row) * self.seg_w
            raise InputError(f"{self.path}: the {unit} at x={x0}, y={y0} ({self.width}x{self.height} px level) is "
                             f"damaged ({type(err).__name__}: {err})") from None
        if segment is None:
            raise InputError(f"{self.path}: segment {index} could not be decoded")
        segment = np.asarray(segment)
        segment = segment.reshape(segment.shape[-3:])
        if segment.shape[0] < h or segment.shape[1] < w:
            raise InputError(f"{self.path}: segment {index} decodes to {segment.shape[1]}x{segment.shape[0]} px, "
                             f"expected {w}x{h}: damaged")
        return segment

    def _segment(self, index: int) -> np.ndarray:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        if self.planar:  # the same tile of every sample plane, side by side
            raw = np.concatenate([self._plane(s * self.per_plane + index)[..., :1] for s in range(self.samples)], axis=2)
        else:
            raw = self._plane(index)
        if self.invert:
            raw = self._white - raw
        array = to_rgb(raw)
        with self._lock:
            self._cache[index] = array
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return array

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)  # beyond the image: glass
        for sy in range(max(0, y) // self.seg_h, min(-(-(y + h) // self.seg_h), -(-self.height // self.seg_h))):
            for sx in range(max(0, x) // self.seg_w, min(-(-(x + w) // self.seg_w), self.per_row)):
                seg = self._segment(sy * self.per_row + sx)
                y0, x0 = sy * self.seg_h, sx * self.seg_w
                ys, xs = max(y, y0), max(x, x0)
                ye, xe = min(y + h, y0 + seg.shape[0], self.height), min(x + w, x0 + seg.shape[1], self.width)
                if ye > ys and xe > xs:
                    out[ys - y:ye - y, xs - x:xe - x] = seg[ys - y0:ye - y0, xs - x0:xe - x0]
        return out


def _ome_mpp(xml: str) -> float | None:
    match = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml or "")
    if not match:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(0)))
    try:
        size = float(attrs["PhysicalSizeX"])
    except (KeyError, ValueError):
        return None
    return size * UNITS_UM.get(attrs.get("PhysicalSizeXUnit", "µm"), float("nan"))


def tiff_mpp(tif, page) -> tuple[float | None, str]:
    """Microns per pixel a TIFF states (Aperio description, OME-XML, resolution tags), and where."""
    if tif.is_svs:
        from tifffile.tifffile import svs_description_metadata

        try:
            mpp = svs_description_metadata(page.description).get("MPP")
        except Exception:  # a description tifffile cannot parse states nothing
            mpp = None
        if mpp is not None:
            return plausible_mpp(float(mpp), "the Aperio description (MPP)")
    if tif.is_ome:
        mpp = _ome_mpp(tif.ome_metadata)
        if mpp is not None:
            return plausible_mpp(mpp, "OME-XML PhysicalSizeX")
    unit = getattr(page.resolutionunit, "name", str(page.resolutionunit)).lower()
    xres = page.resolution[0] if page.resolution else 0
    if unit in UNITS_UM and xres:
        return plausible_mpp(UNITS_UM[unit] / xres, f"TIFF resolution tags ({xres:.6g} px per {unit})")
    return None, ""


class TiffSlide(Source):
    """A TIFF, a pyramid when it has one (tifffile's levels of its first series)."""

    def __init__(self, path: Path):
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            self._pages = [level.pages[0] for level in series.levels]
            self._pages = [p.aspage() if hasattr(p, "aspage") else p for p in self._pages]
            first = self._pages[0]
            self.note = conversion_note(int(first.samplesperpixel))
            self.mpp, self.mpp_source = tiff_mpp(self._tif, first)
        except InputError:
            raise
        except Exception as err:
            raise _tiff_error(self.path, err) from None
        h0, w0 = int(first.imagelength), int(first.imagewidth)
        self.levels = [Level(int(p.imagelength), int(p.imagewidth),
                             (w0 / max(1, int(p.imagewidth)) + h0 / max(1, int(p.imagelength))) / 2) for p in self._pages]
        self._readers: dict[int, TiffLevelReader] = {}
        try:
            self.reader(0)
        except BaseException:
            self._tif.close()
            raise

    def reader(self, level: int = 0) -> TiffLevelReader:
        if level not in self._readers:
            try:
                self._readers[level] = TiffLevelReader(self._tif, self._pages[level], self.path)
            except InputError:
                raise
            except Exception as err:
                raise _tiff_error(self.path, err) from None
        return self._readers[level]

    def close(self) -> None:
        self._tif.close()


# -- OpenSlide ------------------------------------------------------------------------------------

class _OpenSlideLevel:
    block = None

    def __init__(self, slide, level: int, spec: Level):
        self.slide, self.level, self.downsample = slide, level, spec.downsample
        self.height, self.width = spec.height, spec.width

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        # OpenSlide takes the top-left corner in level-0 pixels and the size in this level's pixels.
        origin = (int(round(x * self.downsample)), int(round(y * self.downsample)))
        return to_rgb(np.asarray(self.slide.read_region(origin, self.level, (w, h))))


class OpenSlideSource(Source):
    """OpenSlide formats with their pyramid (OpenSlide caches decoded tiles itself)."""

    def __init__(self, path: Path):
        import openslide

        self.path = Path(path)
        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as err:
            raise InputError(f"{path}: OpenSlide cannot read it ({type(err).__name__}: {err})") from None
        self.levels = [Level(h, w, float(d)) for (w, h), d in
                       zip(self.slide.level_dimensions, self.slide.level_downsamples)]
        try:
            stated = float(self.slide.properties.get("openslide.mpp-x", ""))
        except ValueError:
            stated = None
        self.mpp, self.mpp_source = plausible_mpp(stated, "OpenSlide (openslide.mpp-x)")

    def reader(self, level: int = 0) -> _OpenSlideLevel:
        return _OpenSlideLevel(self.slide, level, self.levels[level])

    def close(self) -> None:
        self.slide.close()


# -- whole images -----------------------------------------------------------------------------------

class ArrayRegionReader(Source):
    """A decoded image (PNG/JPEG/BMP cannot be read partially) behind the same interface."""

    block = None

    def __init__(self, array: np.ndarray, note: str = "", mpp: float | None = None, mpp_source: str = ""):
        self.array, self.note, self.mpp, self.mpp_source = array, note, mpp, mpp_source
        self.levels = [Level(array.shape[0], array.shape[1], 1.0)]

    def reader(self, level: int = 0) -> "ArrayRegionReader":
        return self

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, np.uint8)
        part = self.array[y:y + h, x:x + w]
        out[: part.shape[0], : part.shape[1]] = part
        return out


def _decode_whole(path: Path) -> ArrayRegionReader:
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        dpi = img.info.get("dpi")
        if mode in ("P", "PA"):  # palette: expand, keeping transparency for compositing
            img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        array = np.asarray(img)
    channels = 1 if array.ndim == 2 else array.shape[2]
    note = conversion_note(channels) or ("" if mode == "RGB" else f"{mode} converted to RGB")
    mpp, source = None, ""
    if dpi and float(dpi[0]) > 0:
        mpp, source = plausible_mpp(25400.0 / float(dpi[0]), f"its dpi ({float(dpi[0]):.6g})")
    return ArrayRegionReader(to_rgb(array), note, mpp, source)


def _dicom(path: Path) -> "OpenSlideSource":
    """A DICOM whole-slide image (its folder's .dcm files are its levels): OpenSlide reads them from 4.0 on."""
    install = "pip install 'openslide-python>=1.3' 'openslide-bin>=4.0'"
    if importlib.util.find_spec("openslide") is None:
        raise InputError(f"{path}: reading DICOM slides needs OpenSlide 4.0 or later: {install}")
    import openslide

    version = getattr(openslide, "__library_version__", "0")
    if int(str(version).split(".")[0] or 0) < 4:
        raise InputError(f"{path}: reading DICOM slides needs OpenSlide 4.0 or later (this is {version}): {install}")
    return OpenSlideSource(path)


def open_image(path: Path) -> Source:
    """A source for any supported input; InputError naming the file when it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == DICOM:
        return _dicom(path)
    if suffix in SLIDE_EXTENSIONS:
        if importlib.util.find_spec("openslide") is not None:
            return OpenSlideSource(path)
        if suffix not in TIFF_SLIDES:
            raise InputError(f"{path}: reading {suffix} slides needs openslide-python "
                             "(pip install openslide-python openslide-bin)")
        return TiffSlide(path)
    if suffix in (".tif", ".tiff"):
        return TiffSlide(path)
    try:
        return _decode_whole(path)
    except Exception as err:
        raise InputError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def tissue_mask(pixels: np.ndarray) -> np.ndarray:
    """Which pixels look like stained tissue: saturation (max - min) / max above 0.08, and not
    near-white (max < 245; glass and background). Integer channel arithmetic: this runs on every tile."""
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    mx = np.maximum(np.maximum(r, g), b)
    spread = (mx - np.minimum(np.minimum(r, g), b)).astype(np.uint16)
    return (spread * 25 > mx.astype(np.uint16) * 2) & (mx < 245)


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of a tile's pixels that look like stained tissue (``tissue_mask``)."""
    return float(np.count_nonzero(tissue_mask(tile))) / (tile.shape[0] * tile.shape[1])


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
