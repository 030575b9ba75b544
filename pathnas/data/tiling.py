"""Whole-slide images and their region annotations -> a training set of labelled tiles (or tiles and masks).

``make_tiles`` is `pathnas-edge data tiles`. Slides are read by the workstation runtime's reader
(pathnas.deploy.images: every format it reads) at the level and tile size its ``plan_reading``
picks for ``mpp``, so training tiles show what `pathnas-infer` will show the model. The output is
an image folder the rest of the toolchain reads as it reads any other:
- classification: ``OUT/<class>/<slide>_x<X>_y<Y>.png`` (X, Y: the tile's top left in level-0 px);
- segmentation: ``OUT/images/<name>.png`` + ``OUT/masks/<name>.png`` (class values, 0 = background);
- ``.tif`` instead of ``.png`` with ``image_format="tiff"``: uncompressed, about 4x cheaper to write
  than PNG at zlib level 1 and half again the size (benchmarks/tiling_throughput.py);
- ``image_format="pack"``: no image files; each slide's rows stream into a raw file beside its record,
  and the pack's arrays are those files copied whole once all slides are done (hashed as copied);
  the raw files are then removed (a pack is not kept twice on disk), and a re-run first copies each
  slide's rows back out of the finished pack (``slide_rows`` in pack.json) to redo only what changed;
- ``splits.json``: train / val / test drawn by slide (or patient), never by tile, seeded and
  stratified by class;
- ``report.json``: per slide and per class, the tiles kept and those left out and why;
- ``dataset.json``, written last: µm/px, tile size, overlap, the rule, the classes (and their mask
  values), the SHA-256 of every slide and annotation file.

Labels. Each class's regions are merged (shapely union); where classes overlap, the one earlier in
``priority`` owns the overlap (the classes become disjoint), never the order of the files. A tile
then takes, by ``rule``: ``centroid``, the class under its centre; ``majority``, the class covering
most of it, if it covers at least ``min_cover``; ``exclude-mixed``, the one class present, if it
covers at least ``min_cover`` (a tile touched by two classes is left out). Without
``background_class`` unannotated area is no class (a tile of it is left out); with it, it is that
class. Masks take, per pixel, the class whose region holds the pixel's centre. Tiles are labelled
before they are read: tiles no rule keeps are never decoded.

Resumable and parallel: each slide is tiled by one process into a staging folder, its tiles moved
into place, then its done record written (OUT/.tiles/<slide>.json, last): a rerun skips the slides
whose record matches the slide's and annotations' content, and redoes the others. Memory is bounded
by the reader's segment cache and one tile, whatever the slide's size: tiles are streamed from the
grid to disk, and their list to a file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..deploy.images import DICOM, SLIDE_EXTENSIONS, InputError, open_image, plausible_mpp, tile_grid, tissue_fraction
from ..errors import ConfigError
from ..io import atomic_path, read_json, sha256_file, sweep_temporaries, write_json_atomic
from ..lock import RunLock
from .annotations import ANNOTATION_EXTENSIONS, Annotations, Region, read_annotations
from .folders import MARKER_FILE, SPLITS, SPLITS_FILE, DataError
from .shards import IMAGES_FILE, LABELS_FILE, MASKS_FILE, PACK_FORMAT, PACK_INDEX

RULES = ("centroid", "majority", "exclude-mixed")
TASKS = ("classify", "segment")
# -> the tiles' suffix; "pack": no image files, the tiles' pixels straight into a pack's arrays (names only)
IMAGE_FORMATS = {"png": ".png", "tiff": ".tif", "pack": ""}
SLIDE_ROWS = "slide_rows"  # pack.json: each slide's first row and row count (tiles written as a pack)
SLIDE_FILES = SLIDE_EXTENSIONS | {".tif", ".tiff"}
STATE_DIR = ".tiles"  # done records, tile lists and staging folders of the slides
HEADER_FILE = "header.json"
REPORT_FILE = "report.json"
FORMAT = "pathnas-tiles/1"
REASONS = ("unannotated", "mixed", "under_min_cover", "too_little_tissue")
_EPS = 1e-9  # a share of a tile that counts as covered (a shared edge covers nothing)


class OtherSettingsError(ConfigError):
    """The output folder holds tiles made with other settings."""


@dataclass(frozen=True)
class TileSettings:
    """What decides the tiles (a rerun with other values refuses: the folder would mix two data sets)."""

    mpp: float
    size: int = 224
    overlap: float = 0.0
    task: str = "classify"
    rule: str = "centroid"
    min_cover: float = 0.5
    min_tissue: float = 0.5
    classes: tuple[str, ...] = ()  # () : every class the annotations use, sorted
    priority: tuple[str, ...] = ()  # () : the order of classes
    background_class: str | None = None
    repair: bool = True  # self-intersecting polygons: repaired (annotations.REPAIR_RULE) or refused
    image_format: str = "png"  # "tiff" (uncompressed: fast to write, larger), or "pack" (no files: a pack)

    def check(self) -> None:
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and 0.01 <= self.mpp <= 50):
            raise ConfigError(f"--mpp {self.mpp}: microns per pixel between 0.01 and 50 (0.25 is a 40x scan, 0.5 "
                              f"a 20x one)")
        if self.size < 8:
            raise ConfigError(f"--size {self.size}: a tile must be at least 8 pixels")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap {self.overlap}: a share of the tile in [0, 1)")
        if self.task not in TASKS:
            raise ConfigError(f"--task {self.task!r}: allowed values are {', '.join(TASKS)}")
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"--image-format {self.image_format!r}: allowed values are {', '.join(IMAGE_FORMATS)}")
        if self.rule not in RULES:
            raise ConfigError(f"--label-rule {self.rule!r}: allowed values are {', '.join(RULES)}")
        for name, value in (("--min-cover", self.min_cover), ("--min-tissue", self.min_tissue)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} {value}: a share in [0, 1]")
        unknown = [p for p in self.priority if p not in self.classes]
        if unknown and self.classes:  # checked again once the classes are known (resolve_classes)
            raise ConfigError(f"--priority names {', '.join(unknown)}, not in the classes ({', '.join(self.classes)})")
        if self.background_class in self.classes:
            raise ConfigError(f"--background-class {self.background_class}: also an annotated class; name the "
                              f"unannotated area otherwise")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"--classes {','.join(self.classes)}: a class is named twice")

    @property
    def order(self) -> tuple[str, ...]:
        """The classes by priority: the listed ones first, the rest in class order."""
        return tuple(self.priority) + tuple(c for c in self.classes if c not in self.priority)

    @property
    def labels(self) -> list[str]:
        """The data set's classes: classification folders, or mask values (0 = background) for segmentation."""
        if self.task == "segment":
            return [self.background_class or "background", *self.classes]
        return [*self.classes, *([self.background_class] if self.background_class else [])]


@dataclass(frozen=True)
class SlideJob:
    """One slide, its annotation files, its patient (the split group) and its tiles' name prefix."""

    slide: Path
    annotations: tuple[Path, ...]
    name: str
    patient: str | None = None
    mpp: float | None = None  # --mpp-override


# -- finding and pairing the inputs ------------------------------------------------------------------

def _slide_stem(path: Path) -> str:
    if path.suffix.lower() == DICOM:
        return path.parent.name
    return path.stem


def _annotation_stem(path: Path) -> str:
    """``slide.geojson`` and ``slide.svs.geojson`` (QuPath scripts write both) pair with ``slide.svs``."""
    stem = path.stem
    inner = Path(stem).suffix.lower()
    return Path(stem).stem if inner in SLIDE_FILES | {DICOM, ".mrxs"} else stem


def find_files(paths: list[Path], suffixes, what: str) -> list[Path]:
    """The files named, and the matching files directly in the folders named (sorted); missing ones refused."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for p in sorted(path.iterdir()):
                if p.name.startswith("."):
                    continue
                if p.is_file() and p.suffix.lower() in suffixes:
                    found.append(p)
                elif p.is_dir() and DICOM in suffixes:  # a DICOM slide: a folder of .dcm files, one per level
                    found += sorted(p.glob("*.dcm"))[:1]
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such {what} file or folder")
    if not found:
        raise ConfigError(f"{', '.join(map(str, paths))}: no {what} files ({', '.join(sorted(suffixes))})")
    dicom: dict[Path, Path] = {}  # one .dcm per DICOM folder opens the slide (OpenSlide finds the other levels)
    return list(dict.fromkeys(dicom.setdefault(p.parent, p) if p.suffix.lower() == DICOM else p for p in found))


def read_pairs(path: Path) -> dict[str, tuple[list[str], str | None]]:
    """A CSV ``slide,annotations[,patient]`` (a header row of those names; several rows may name one slide):
    slide file name or stem -> (annotation file names, patient)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["slide", "annotations"]:
        raise ConfigError(f"{path}: the first row must be the header slide,annotations[,patient]")
    pairs: dict[str, tuple[list[str], str | None]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"{path}: line {n}: expected slide,annotations[,patient]")
        files, patient = pairs.get(row[0].strip(), ([], None))
        new_patient = row[2].strip() if len(row) > 2 and row[2].strip() else None
        if patient and new_patient and new_patient != patient:
            raise ConfigError(f"{path}: line {n}: {row[0].strip()} is given two patients ({patient}, {new_patient})")
        pairs[row[0].strip()] = (files + [row[1].strip()], new_patient or patient)
    return pairs


def read_mpp_overrides(items: list[str]) -> dict[str, float]:
    """``SLIDE=M`` items, or CSV files of ``slide,mpp`` rows: slide name or stem -> µm/px."""
    out: dict[str, float] = {}
    for item in items:
        if "=" in item:
            rows = [(item, 0, item.rsplit("=", 1))]
        elif Path(item).is_file():
            lines = Path(item).read_text(encoding="utf-8-sig").splitlines()
            rows = [(item, n, r) for n, r in enumerate(csv.reader(lines), start=1) if r and r[0].strip().lower() != "slide"]
        else:
            raise ConfigError(f"--mpp-override {item!r}: expected SLIDE=MICRONS_PER_PIXEL or a CSV file slide,mpp")
        for where, line, row in rows:
            at = f"{where}: line {line}" if line else f"--mpp-override {where!r}"
            try:
                value = float(row[1])
            except (IndexError, ValueError):
                raise ConfigError(f"{at}: expected SLIDE,MICRONS_PER_PIXEL") from None
            if plausible_mpp(value, "")[0] is None:
                raise ConfigError(f"{at}: {value} µm/px is no scanner's resolution (0.01-50)")
            out[row[0].strip()] = value
    return out


def pair_inputs(slides: list[Path], annotations: list[Path], pairs_csv: Path | None = None,
                mpp_overrides: dict[str, float] | None = None) -> list[SlideJob]:
    """Each slide with its annotation files: by the CSV when given, else by file stem. A slide without
    annotations, an annotation file without a slide and two slides of one name are refused."""
    slides = find_files(slides, SLIDE_FILES | {DICOM}, "slide")
    files = find_files(annotations, set(ANNOTATION_EXTENSIONS), "annotation")
    names: dict[str, Path] = {}
    for slide in slides:
        stem = _slide_stem(slide)
        if stem in names:
            raise ConfigError(f"{slide}: same name as {names[stem]}; slides pair with annotations and name their "
                              f"tiles by name: rename one")
        names[stem] = slide
    overrides = dict(mpp_overrides or {})
    jobs = []
    if pairs_csv is not None:
        table = read_pairs(pairs_csv)
        by_name = {f.name: f for f in files} | {f.stem: f for f in files}
        for key, (wanted, patient) in table.items():
            slide = names.get(key) or names.get(Path(key).stem)
            if slide is None:
                raise ConfigError(f"{pairs_csv}: slide {key} is not among the slides given "
                                  f"({', '.join(sorted(names)[:8])}{'...' if len(names) > 8 else ''})")
            chosen = []
            for name in wanted:
                match = by_name.get(name) or by_name.get(Path(name).name)
                if match is None:
                    raise ConfigError(f"{pairs_csv}: annotation file {name} (slide {key}) is not among the annotation "
                                      f"files given")
                chosen.append(match)
            jobs.append((slide, tuple(chosen), patient))
        unlisted = sorted(set(names) - {_slide_stem(s) for s, _, _ in jobs})
        if unlisted:
            raise ConfigError(f"{pairs_csv}: no row for slide(s) {', '.join(unlisted)}; add them or leave them out")
    else:
        by_stem: dict[str, list[Path]] = {}
        for f in files:
            by_stem.setdefault(_annotation_stem(f), []).append(f)
        orphans = sorted(set(by_stem) - set(names))
        if orphans:
            f = by_stem[orphans[0]][0]
            raise ConfigError(f"{f}: no slide named {orphans[0]} (slides: {', '.join(sorted(names)[:8])}"
                              f"{'...' if len(names) > 8 else ''}); annotation files pair with slides by file name, "
                              f"or by a --pairs CSV slide,annotations[,patient]")
        for stem, slide in names.items():
            if stem not in by_stem:
                raise ConfigError(f"{slide}: no annotation file named {stem} (.geojson, .xml) among the annotations "
                                  f"given; export its annotations, or leave the slide out")
            jobs.append((slide, tuple(by_stem[stem]), None))
    return [SlideJob(slide, files_, _slide_stem(slide), patient,
                     overrides.get(slide.name, overrides.get(_slide_stem(slide))))
            for slide, files_, patient in sorted(jobs, key=lambda j: _slide_stem(j[0]))]


# -- labels -----------------------------------------------------------------------------------------

class Labeller:
    """The classes' regions of one slide made disjoint by priority, and what they say about a tile.

    ``classes`` index the labels; the regions of a class are merged, then each class gives up the
    area a class earlier in ``order`` already holds. Lookups go through an STRtree of the parts.
    """

    def __init__(self, regions: list[Region], classes: list[str], order: tuple[str, ...]):
        import shapely
        from shapely.strtree import STRtree

        self.classes = list(classes)
        taken = None
        parts, owners = [], []
        for name in order:
            mine = [r.geometry for r in regions if r.name == name]
            if not mine:
                continue
            area = shapely.union_all(mine)
            if taken is not None:
                area = shapely.difference(area, taken)
            taken = area if taken is None else shapely.union(taken, area)
            for part in shapely.get_parts(area):
                if part.geom_type == "Polygon" and part.area > 0:
                    shapely.prepare(part)
                    parts.append(part)
                    owners.append(self.classes.index(name))
        self.parts, self.owners = parts, np.asarray(owners, np.int64)
        self._parts = np.array(parts + [None], dtype=object)[:-1]  # an object array (shapely's vectorised calls)
        self.tree = STRtree(parts)

    def covers(self, x0: np.ndarray, y0: np.ndarray, side: float) -> np.ndarray:
        """Share of each square tile (top-left corners in level-0 px) each class covers: tiles x classes. One
        vectorised pass for a chunk of tiles: the tree's candidates, then containment (prepared parts), and an
        intersection only where a region's edge crosses the tile."""
        import shapely

        boxes = shapely.box(x0, y0, x0 + side, y0 + side)
        out = np.zeros((len(boxes), len(self.classes)))
        tiles, parts = self.tree.query(boxes)
        if len(tiles):
            area = np.full(len(tiles), side * side)
            crossed = ~shapely.contains(self._parts[parts], boxes[tiles])
            area[crossed] = shapely.area(shapely.intersection(self._parts[parts[crossed]], boxes[tiles[crossed]]))
            np.add.at(out, (tiles, self.owners[parts]), area)
        return out / (side * side)

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The class whose region holds each point (the earlier class on a shared edge), -1 where none does."""
        import shapely

        points = shapely.points(x, y)
        out = np.full(len(points), len(self.classes), np.int64)
        tiles, parts = self.tree.query(points, predicate="intersects")
        np.minimum.at(out, tiles, self.owners[parts])
        out[out == len(self.classes)] = -1
        return out

    def mask(self, x0: float, y0: float, side: float, n: int) -> np.ndarray:
        """n x n uint8: 1 + the class of the region holding each pixel's centre, 0 outside every region."""
        import shapely

        tile = shapely.box(x0, y0, x0 + side, y0 + side)
        out = np.zeros((n, n), np.uint8)
        step = side / n
        centres = x0 + (np.arange(n) + 0.5) * step
        xs, ys = np.meshgrid(centres, y0 + (np.arange(n) + 0.5) * step)
        for i in self.tree.query(tile).tolist():
            part, value = self.parts[i], np.uint8(self.owners[i] + 1)
            if part.contains(tile):
                out[:] = value
            else:
                out[shapely.contains_xy(part, xs, ys)] = value
        return out


def decide(cover: np.ndarray, centre: int | None, rule: str, min_cover: float,
           background: int | None) -> tuple[int | None, str]:
    """(label index, '') or (None, why it is left out) for a tile, given the classes' cover and the centre's class.
    ``background`` is the index of the unannotated area's class, or None when it is no class."""
    annotated = float(cover.sum())
    if background is not None:
        cover = np.append(cover, max(0.0, 1.0 - annotated))
    if rule == "centroid":
        if centre is not None:
            return centre, ""
        return (background, "") if background is not None else (None, "unannotated")
    if annotated <= _EPS and background is None:
        return None, "unannotated"
    present = np.flatnonzero(cover > _EPS)
    if rule == "exclude-mixed" and len(present) > 1:
        return None, "mixed"
    best = int(np.argmax(cover))  # the first of equals: the earlier in priority (classes are in priority order)
    return (best, "") if cover[best] >= min_cover else (None, "under_min_cover")


def labelled_grid(reader, tile: int, downsample: float, labeller: Labeller, settings: TileSettings,
                  background: int | None, chunk: int = 256):
    """The grid of a level (``tile_grid``'s order) with each tile's label: (y, x, label, mask, why) per tile, ``label``
    an index of ``labeller.classes`` (``background`` for the unannotated class) or None with ``why`` it is left
    out; ``mask`` (segmentation) 1 + class index per pixel. Labelled a chunk of tiles at a time."""
    from itertools import islice

    grid = tile_grid(reader.height, reader.width, tile, settings.overlap, reader.block)
    side = tile * downsample
    for positions in iter(lambda: list(islice(grid, chunk)), []):
        ys, xs = np.asarray(positions, np.float64).T
        if settings.task == "segment":
            for y, x in positions:
                mask = labeller.mask(x * downsample, y * downsample, side, settings.size)
                annotated = background is not None or mask.any()
                yield y, x, None, mask, "" if annotated else "unannotated"
            continue
        covers = labeller.covers(xs * downsample, ys * downsample, side)
        centres = (labeller.at((xs + tile / 2) * downsample, (ys + tile / 2) * downsample)
                   if settings.rule == "centroid" else np.full(len(positions), -1))
        for (y, x), cover, centre in zip(positions, covers, centres.tolist()):
            label, why = decide(cover, None if centre < 0 else centre, settings.rule, settings.min_cover, background)
            yield y, x, label, None, why


# -- one slide ----------------------------------------------------------------------------------------

def slide_sha256(path: Path) -> str:
    """SHA-256 of a slide: its file, or for MRXS its index file and the files of its data folder."""
    if path.suffix.lower() == ".mrxs" and path.with_suffix("").is_dir():
        import hashlib

        digest = hashlib.sha256(sha256_file(path).encode())
        for p in sorted(q for q in path.with_suffix("").rglob("*") if q.is_file()):
            digest.update(p.name.encode() + sha256_file(p).encode())
        return digest.hexdigest()
    return sha256_file(path)


def open_slide(job: SlideJob):
    """The runtime's source for the slide, with its resolution checked (or overridden); InputError otherwise."""
    try:
        source = open_image(job.slide)
    except InputError as err:  # the runtime's own error type: the toolchain's CLI prints UserErrors
        raise DataError(str(err)) from None
    if job.mpp is not None:
        source.mpp, source.mpp_source = job.mpp, "--mpp-override"
    elif source.mpp is None:
        source.close()
        why = f" ({source.mpp_source})" if source.mpp_source else ""
        raise DataError(f"{job.slide}: states no plausible resolution{why}; say what it is with --mpp-override "
                         f"{job.slide.name}=MICRONS_PER_PIXEL")
    return source


def slide_origin(source) -> tuple[float, float]:
    """Where QuPath's (0, 0) lies in the reader's level-0 pixels: OpenSlide's bounds offset (MRXS), else (0, 0).
    QuPath shows an OpenSlide image cropped to its bounds; OpenSlide's own coordinates are not cropped."""
    properties = getattr(getattr(source, "slide", None), "properties", None) or {}
    try:
        return float(properties.get("openslide.bounds-x", 0) or 0), float(properties.get("openslide.bounds-y", 0) or 0)
    except (TypeError, ValueError):
        return 0.0, 0.0


def load_regions(job: SlideJob, settings: TileSettings, width: int, height: int,
                 origin: tuple[float, float]) -> tuple[list[Region], list[str], dict[str, int], int]:
    """The slide's regions of the chosen classes (placed on the slide, clipped to it), the notes, how many
    regions of classes not chosen were left out, by class, and how many lay wholly outside the slide."""
    regions, notes, other, outside = [], [], {}, 0
    for path in job.annotations:
        found = read_annotations(path, repair=settings.repair).shifted(*origin).within(width, height)
        notes += found.notes
        outside += found.outside
        for r in found.regions:
            if r.name in settings.classes:
                regions.append(r)
            else:
                other[r.name] = other.get(r.name, 0) + 1
    return regions, notes, other, outside


def _inputs(job: SlideJob) -> dict:
    """What a slide's tiles depend on besides the settings: its content and its annotations' content."""
    return {"slide_sha256": slide_sha256(job.slide), "mpp_override": job.mpp,
            "annotations": {p.name: sha256_file(p) for p in job.annotations}}


def _encode(array: np.ndarray, image_format: str) -> bytes:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    if image_format == "png":
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # level 1: 30 % less time than 6
    else:
        Image.fromarray(array).save(buffer, format="TIFF")  # uncompressed
    return buffer.getvalue()


def _remove_listed(out: Path, listing: Path) -> None:
    if listing.is_file():
        for line in listing.read_text().splitlines():
            rel = line.split("\t", 1)[0]
            (out / rel).unlink(missing_ok=True)
            if rel.startswith("images/"):
                (out / "masks" / rel[len("images/"):]).unlink(missing_ok=True)
        listing.unlink()
    for raw in ("tiles", "masks"):  # a pack's rows (image_format "pack")
        (listing.parent / f"{listing.stem}.{raw}.raw").unlink(missing_ok=True)


def tile_slide(job: SlideJob, settings: TileSettings, out: Path, advance: Callable[[int], None] | None = None) -> dict:
    """Tile one slide into ``out`` (see the module docstring); its done record, or the one already there when the
    slide and its annotations did not change."""
    from PIL import Image

    from ..deploy.infer import plan_reading

    state = out / STATE_DIR
    record_path, listing = state / f"{job.name}.json", state / f"{job.name}.tiles"
    inputs = _inputs(job)
    rows_kept = settings.image_format != "pack" or Path(f"{state / job.name}.tiles.raw").is_file()
    if record_path.is_file():
        record = read_json(record_path, "slide record")
        if record.get("inputs") == inputs and rows_kept:
            return {**record, "skipped": True}
        record_path.unlink()  # the slide or its annotations changed: its old tiles go
    _remove_listed(out, listing)
    source = open_slide(job)
    try:
        plan = plan_reading(source, settings.mpp, settings.size)
        downsample = source.levels[plan.level].downsample
        regions, notes, other, outside = load_regions(job, settings, source.width, source.height, slide_origin(source))
        if not regions:
            notes.append(f"{job.slide}: no region of the classes {', '.join(settings.classes)} in its annotations")
        # Label indices follow the priority (ties go to the earlier class); names map them to the data set's.
        ordered = list(settings.order)
        labeller = Labeller(regions, ordered, settings.order)
        background = len(ordered) if settings.background_class else None
        labels = settings.labels
        names = ordered + [settings.background_class or "background"]
        values = np.array([0] + [labels.index(c) for c in ordered], np.uint8)  # mask: 1 + index -> class value
        staging = state / f"{job.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        counts = dict.fromkeys(("kept", *REASONS), 0)
        per_class = dict.fromkeys(labels, 0)
        reader = source.reader(plan.level)
        side0, n, seen = plan.tile * downsample, settings.size, 0
        suffix, packed = IMAGE_FORMATS[settings.image_format], settings.image_format == "pack"
        with ExitStack() as files:
            tiles = files.enter_context(open(staging / "tiles.tsv", "w"))
            if packed:  # rows of the pack's arrays, this slide's; assembled in split order at the end
                pixels = files.enter_context(open(staging / "tiles.raw", "wb"))
                masks = files.enter_context(open(staging / "masks.raw", "wb"))
            made: set[Path] = set()
            for y, x, label, mask, why in labelled_grid(reader, plan.tile, downsample, labeller, settings, background):
                seen += 1
                if advance and seen % 64 == 0:
                    advance(64)
                if why:  # labelled before it is read: a tile no rule keeps is never decoded
                    counts[why] += 1
                    continue
                region = reader.read_region(y, x, plan.tile, plan.tile)
                if tissue_fraction(region) < settings.min_tissue:
                    counts["too_little_tissue"] += 1
                    continue
                if region.shape[0] != n:  # the runtime's resize (deploy.infer.Model.prepare): bilinear
                    region = np.asarray(Image.fromarray(region).resize((n, n), Image.BILINEAR))
                stem = f"{job.name}_x{round(x * downsample)}_y{round(y * downsample)}"
                if settings.task == "segment":
                    mask = values[mask]
                    rel, folders = f"images/{stem}{suffix}", ("images", "masks")
                    for value in np.unique(mask).tolist():
                        per_class[labels[value]] += 1
                    name = labels[int(np.bincount(mask.ravel()).argmax())]
                else:
                    name = names[label]
                    rel, folders = f"{name}/{stem}{suffix}", (name,)
                    per_class[name] += 1
                if packed:
                    pixels.write(np.ascontiguousarray(region.transpose(2, 0, 1)))  # channels first, as a pack stores them
                    if mask is not None:
                        masks.write(np.ascontiguousarray(mask, np.uint8))
                    tiles.write(f"{rel}\t{name}\n")
                    counts["kept"] += 1
                    continue
                for folder in set(folders) - made:
                    (staging / folder).mkdir()
                    made.add(folder)
                if mask is not None:
                    (staging / "masks" / f"{stem}{suffix}").write_bytes(_encode(mask, settings.image_format))
                (staging / rel).write_bytes(_encode(region, settings.image_format))
                tiles.write(f"{rel}\t{name}\n")
                counts["kept"] += 1
        if advance:
            advance(seen % 64)
        # Into place, then the list, then the record (last): a kill before it redoes this slide only.
        for folder in made:
            (out / folder).mkdir(exist_ok=True)
        with open(staging / "tiles.tsv") as tiles:
            for line in tiles if not packed else ():
                rel = line.split("\t", 1)[0]
                os.replace(staging / rel, out / rel)
                if settings.task == "segment":
                    mask_rel = "masks/" + rel[len("images/"):]
                    os.replace(staging / mask_rel, out / mask_rel)
        if packed:
            for raw in ("tiles", "masks"):
                os.replace(staging / f"{raw}.raw", state / f"{job.name}.{raw}.raw")
        os.replace(staging / "tiles.tsv", listing)
        shutil.rmtree(staging, ignore_errors=True)
        record = {"slide": str(job.slide), "name": job.name, "patient": job.patient, "inputs": inputs,
                  "annotations": [str(p) for p in job.annotations], "slide_mpp": source.mpp,
                  "mpp_source": source.mpp_source, "level": plan.level, "downsample": round(downsample, 6),
                  "tile_level_px": plan.tile, "tile_level0_px": round(side0, 3), "read_mpp": plan.read_mpp,
                  "reading": plan.note, "tiles_seen": seen, "counts": counts, "per_class": per_class,
                  "other_classes": other, "regions_outside_slide": outside, "notes": notes}
        write_json_atomic(record_path, record)
        return {**record, "skipped": False}
    finally:
        source.close()


def _tile_in_process(job: SlideJob, settings: TileSettings, out: Path) -> dict:
    """A worker process's call: errors come back as their one-line message (tracebacks are for bugs)."""
    from ..errors import UserError

    try:
        return tile_slide(job, settings, out)
    except (UserError, InputError) as err:
        return {"error": str(err)}


# -- splits ---------------------------------------------------------------------------------------------

def split_groups(counts: dict[str, dict[str, int]], seed: int, fractions=(0.7, 0.15, 0.15)) -> dict[str, list[str]]:
    """Groups (slides or patients) -> train / val / test, seeded and stratified by class: for every class,
    rarest first, val and test are first given one group holding it (when there are groups enough), then each
    remaining group goes to the split furthest below its share of the group's classes."""
    if len(counts) < 3:
        raise DataError(f"{len(counts)} slide(s) or patient(s) ({', '.join(sorted(counts))}): at least 3 are needed, "
                        f"since train, val and test get whole slides (tiles of one slide on two sides would inflate "
                        f"the accuracy measured)")
    rng = random.Random(seed)
    groups = sorted(counts)
    rng.shuffle(groups)
    classes = sorted({c for g in counts.values() for c, n in g.items() if n})
    total = {c: sum(counts[g].get(c, 0) for g in groups) for c in classes}
    where: dict[str, str] = {}
    tally = {s: dict.fromkeys(classes, 0) for s in SPLITS}

    def put(group: str, split: str) -> None:
        where[group] = split
        for c, n in counts[group].items():
            if n:
                tally[split][c] += n

    for c in sorted(classes, key=lambda c: (sum(1 for g in groups if counts[g].get(c)), c)):
        holders = [g for g in groups if counts[g].get(c) and g not in where]
        for split in ("val", "test"):
            if not tally[split][c] and holders and len(groups) - len(where) > 1:
                put(holders.pop(), split)
    for group in groups:
        if group in where:
            continue
        def deficit(split: str) -> float:
            share = fractions[SPLITS.index(split)]
            return sum(n * (share - tally[split][c] / total[c]) for c, n in counts[group].items() if n and total[c])

        put(group, max(SPLITS, key=deficit))
    return {s: sorted(g for g in groups if where[g] == s) for s in SPLITS}


# -- the whole set ----------------------------------------------------------------------------------------

def discover_classes(jobs: list[SlideJob], repair: bool) -> tuple[dict[str, int], list[str]]:
    """Every annotation file read once (malformed ones refused before anything is written): regions per class,
    and the notes."""
    found: dict[str, int] = {}
    notes: list[str] = []
    for path in dict.fromkeys(p for job in jobs for p in job.annotations):
        annotations: Annotations = read_annotations(path, repair=repair)
        notes += annotations.notes
        for r in annotations.regions:
            found[r.name] = found.get(r.name, 0) + 1
    return found, notes


def resolve_classes(settings: TileSettings, found: dict[str, int]) -> tuple[TileSettings, list[str]]:
    """Settings with the classes (default: every class found, sorted) and notes on classes left out or unused."""
    notes = []
    classes = tuple(settings.classes) or tuple(sorted(found))
    left_out = sorted(set(found) - set(classes))
    if left_out:
        notes.append(f"annotation classes not in --classes, left out: "
                     + ", ".join(f"{c} ({found[c]} region(s))" for c in left_out))
    unused = [c for c in classes if c not in found]
    if unused:
        notes.append(f"--classes {', '.join(unused)}: no annotation uses it")
    resolved = replace(settings, classes=classes)
    resolved.check()
    return resolved, notes


def _check_out(out: Path, header: dict) -> None:
    state = out / STATE_DIR
    if out.exists() and not (state / HEADER_FILE).is_file() and any(
            not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"{out}: a folder that holds other files, not tiles of `data tiles`; choose another --out")
    if (state / HEADER_FILE).is_file():
        saved = read_json(state / HEADER_FILE, "tiles header")
        if saved != header:
            changed = sorted(k for k in set(header) | set(saved) if saved.get(k) != header.get(k))
            raise OtherSettingsError(f"{out}: tiles made with other settings ({', '.join(changed)} changed); delete {out} to "
                              f"tile afresh, or choose another --out")


def check_inputs(jobs: list[SlideJob], settings: TileSettings) -> tuple[TileSettings, list[str]]:
    """Every annotation file read and every slide opened (its resolution known) before anything is written:
    the settings with their classes resolved, and the notes on what will be left out."""
    groups = sorted({job.patient or job.name for job in jobs})
    if len(groups) < 3:
        split_groups(dict.fromkeys(groups, {}), 0)  # refuses, saying why (before any slide is read)
    found, notes = discover_classes(jobs, settings.repair)
    settings, class_notes = resolve_classes(settings, found)
    for job in jobs:
        open_slide(job).close()
    return settings, class_notes + notes


def grid_tiles(job: SlideJob, settings: TileSettings) -> int:
    """How many tiles the slide's grid has at the settings' resolution (a progress bar's total)."""
    from ..deploy.infer import plan_reading
    from ..deploy.tiles import grid_size

    source = open_slide(job)
    try:
        level = plan_reading(source, settings.mpp, settings.size)
        reader = source.reader(level.level)
        return grid_size(reader.height, reader.width, level.tile, settings.overlap)
    finally:
        source.close()


def make_tiles(jobs: list[SlideJob], out: Path, settings: TileSettings, seed: int = 0, workers: int = 1,
               fractions=(0.7, 0.15, 0.15), advance: Callable[[int, int], None] | None = None,
               warn: Callable[[str], None] | None = None, checked: tuple | None = None) -> dict:
    """Tile every slide of ``jobs`` into ``out``; returns the report (also OUT/report.json). ``checked``:
    what ``check_inputs`` returned, when the caller ran it already."""
    out = Path(out)
    warn = warn or (lambda line: None)
    settings, notes = checked or check_inputs(jobs, settings)
    notes = list(notes)
    header = json.loads(json.dumps({"format": FORMAT, **asdict(settings)}))  # as read back: lists, not tuples
    _check_out(out, header)
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    with RunLock(out, "data tiles"):
        sweep_temporaries(out)
        state.mkdir(exist_ok=True)
        write_json_atomic(state / HEADER_FILE, header)
        sweep_temporaries(state)
        names = {job.name for job in jobs}
        if settings.image_format == "pack":
            _unpack_rows(out, names)
        for name in (MARKER_FILE, SPLITS_FILE, PACK_INDEX):  # rewritten at the end: till then it is no data set
            (out / name).unlink(missing_ok=True)
        for old in sorted(state.glob("*.json")):  # slides no longer given: their tiles go
            if old.name != HEADER_FILE and old.stem not in names:
                _remove_listed(out, state / f"{old.stem}.tiles")
                old.unlink()
                notes.append(f"{old.stem}: not among the slides any more; its tiles were removed")
        for line in notes:
            warn(line)
        records = _run(jobs, settings, out, workers, advance)
        return _finish(out, settings, records, notes, seed, fractions, warn)


def _run(jobs, settings, out, workers, advance) -> list[dict]:
    """Every slide tiled, here or in ``workers`` processes; ``advance(tiles, total)`` as the grid tiles are
    visited (here) or as each slide finishes (in processes)."""
    records: list[dict] = []
    total = sum(grid_tiles(job, settings) for job in jobs) if advance else 0
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if advance:
            advance(done, total)

    if workers <= 1 or len(jobs) == 1:
        for job in jobs:
            try:
                record = tile_slide(job, settings, out, advance=step)
            except InputError as err:  # a damaged tile met while reading
                raise DataError(str(err)) from None
            if record["skipped"]:
                step(record["tiles_seen"])
            records.append(record)
        return records
    import multiprocessing

    # spawn: a forked child of a process with threads (torch's, the readers') can deadlock
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_tile_in_process, job, settings, out) for job in jobs]
        for future in futures:
            record = future.result()
            if "error" in record:
                for other in futures:
                    other.cancel()
                raise DataError(record["error"])
            records.append(record)
            step(record["tiles_seen"])
    return records


def _finish(out: Path, settings: TileSettings, records: list[dict], notes: list[str], seed: int, fractions,
            warn) -> dict:
    labels = settings.labels
    group_of = {r["name"]: (r["patient"] or r["name"]) for r in records}
    by_patient = any(r["patient"] for r in records)
    group_counts: dict[str, dict[str, int]] = {}
    for r in records:
        tally = group_counts.setdefault(group_of[r["name"]], dict.fromkeys(labels, 0))
        for c, n in r["per_class"].items():
            tally[c] += n
        for line in r["notes"]:
            if line not in notes:
                notes.append(line)
                warn(line)
    kept_groups = {g: c for g, c in group_counts.items() if sum(c.values())}
    empty = sorted(set(group_counts) - set(kept_groups))
    if empty:
        line = f"no tile kept from {', '.join(empty)}"
        notes.append(line)
        warn(line)
    groups = split_groups(kept_groups, seed, fractions)
    side_of = {g: s for s, gs in groups.items() for g in gs}
    splits: dict = {s: [] for s in SPLITS}
    per_class_split = {c: dict.fromkeys(SPLITS, 0) for c in labels}
    for r in records:
        split = side_of.get(group_of[r["name"]])
        if split is None:
            continue
        listing = out / STATE_DIR / f"{r['name']}.tiles"
        for line in listing.read_text().splitlines():
            rel, name = line.split("\t")
            splits[split].append(rel)
        for c, n in r["per_class"].items():
            per_class_split[c][split] += n
    missing = [f"{c} in {s}" for c in labels for s in SPLITS if not per_class_split[c][s]]
    if missing:
        line = (f"too few slides{' (patients)' if by_patient else ''} to give every split every class: no tile of "
                + ", ".join(missing) + "; add slides holding them")
        notes.append(line)
        warn(line)
    present = [c for c in labels if sum(per_class_split[c].values())]
    if settings.task == "classify" and len(present) < len(labels):
        line = (f"class(es) {', '.join(c for c in labels if c not in present)} have no tile: the data set has "
                f"{len(present)} classes, not {len(labels)}")
        notes.append(line)
        warn(line)
    # classification: the loader's classes are the class folders, sorted (datasets.list_classes)
    classes_out = sorted(present) if settings.task == "classify" else labels
    splits.update(seed=seed, fractions=list(fractions), task=settings.task, by="patient" if by_patient else "slide",
                  groups=groups)
    write_json_atomic(out / SPLITS_FILE, splits)
    slides = [{"slide": r["slide"], "name": r["name"], "patient": r["patient"], "split": side_of.get(group_of[r["name"]]),
               "sha256": r["inputs"]["slide_sha256"], "annotations": r["inputs"]["annotations"],
               "slide_mpp": r["slide_mpp"], "mpp_source": r["mpp_source"], "level": r["level"],
               "tile_level0_px": r["tile_level0_px"], "tiles_seen": r["tiles_seen"], **r["counts"],
               "regions_outside_slide": r["regions_outside_slide"],
               "per_class": r["per_class"], "skipped": r["skipped"]} for r in records]
    report = {"slides": slides, "classes": {c: {**per_class_split[c], "kept": sum(per_class_split[c].values())}
                                            for c in labels},
              "left_out": {why: sum(r["counts"][why] for r in records) for why in REASONS},
              "notes": notes, "splits": {s: len(splits[s]) for s in SPLITS}}
    write_json_atomic(out / REPORT_FILE, report)
    if settings.image_format == "pack":
        _write_pack(out, settings, records, splits, classes_out)
    summary = {"generator": "pathnas-edge data tiles", "task": settings.task, "classes": classes_out,
               "mpp": settings.mpp, "image_size": settings.size, "overlap": settings.overlap,
               "label_rule": settings.rule, "min_cover": settings.min_cover, "min_tissue": settings.min_tissue,
               "priority": list(settings.order), "background_class": settings.background_class,
               "split_by": splits["by"], "seed": seed,
               "slides": [{"name": s["name"], "file": Path(s["slide"]).name, "sha256": s["sha256"],
                           "annotations": s["annotations"], "patient": s["patient"]} for s in slides]}
    if settings.task == "segment":
        summary["class_values"] = {c: i for i, c in enumerate(labels)}
    write_json_atomic(out / MARKER_FILE, summary)  # last: the folder is a finished data set from now on
    return report


def _write_pack(out: Path, settings: TileSettings, records: list[dict], splits: dict, classes: list[str]) -> None:
    """OUT as a pack (pathnas.data.shards' format), then pack.json (its commit point). The arrays are the slides'
    rows in slide order: a pack finds a split's rows by their names, so each slide's row file is copied whole,
    once, and hashed as it is copied, instead of row by row in split order and read again to hash."""
    files, names, bases, slide_rows = [], [], [], {}
    for r in records:
        base = out / STATE_DIR / r["name"]
        first = len(files)
        with open(f"{base}.tiles") as listing:
            for line in listing:
                rel, name = line.rstrip("\n").split("\t")
                files.append(rel)
                names.append(name)
        bases.append(base)
        slide_rows[r["name"]] = [first, len(files) - first]
    n, size = len(files), settings.size
    digests = {IMAGES_FILE: _concatenate(out / IMAGES_FILE, (n, 3, size, size), [f"{b}.tiles.raw" for b in bases])}
    if settings.task == "segment":
        digests[MASKS_FILE] = _concatenate(out / MASKS_FILE, (n, size, size), [f"{b}.masks.raw" for b in bases])
    else:
        np.save(out / LABELS_FILE, np.array([classes.index(name) for name in names], np.int64))
        digests[LABELS_FILE] = sha256_file(out / LABELS_FILE)
    write_json_atomic(out / PACK_INDEX, {
        "format": PACK_FORMAT, "task": settings.task, "classes": classes, "size": size, "files": files,
        "source": str(out), "splits": {**{s: splits[s] for s in SPLITS}, "skipped": [], "seed": splits["seed"],
                                       "task": settings.task},
        "source_sha256": [None] * n, "sha256": digests, SLIDE_ROWS: slide_rows})
    for base in bases:  # the pack holds them now; _unpack_rows brings them back when a re-run needs them
        for raw in ("tiles", "masks"):
            Path(f"{base}.{raw}.raw").unlink(missing_ok=True)


def _unpack_rows(out: Path, slides: set[str]) -> None:
    """The rows of ``slides`` in a finished pack in OUT back in their raw files beside their records (each written
    beside and renamed), before a re-run removes pack.json: the slides that did not change are not read again."""
    if not (out / PACK_INDEX).is_file():
        return
    index = read_json(out / PACK_INDEX, "pack index")
    ranges = index.get(SLIDE_ROWS)
    if not isinstance(ranges, dict):
        return  # a pack without its slides' rows: every slide is tiled again
    arrays = [(IMAGES_FILE, "tiles")] + ([(MASKS_FILE, "masks")] if index.get("task") == "segment" else [])
    for array_name, raw in arrays:
        array = np.load(out / array_name, mmap_mode="r")
        for name, (first, count) in ranges.items():
            target = out / STATE_DIR / f"{name}.{raw}.raw"
            if name not in slides or target.is_file() or not (out / STATE_DIR / f"{name}.json").is_file():
                continue
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                for start in range(first, first + count, 256):
                    f.write(np.ascontiguousarray(array[start:min(start + 256, first + count)]))
        del array


def _concatenate(path: Path, shape: tuple[int, ...], sources: list[str]) -> str:
    """``path``: a uint8 .npy array of ``shape`` whose rows are the raw files ``sources``, one after another;
    returns its SHA-256, taken as the bytes are written (the pack records it)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    digest = hashlib.sha256(header.getvalue())
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "wb") as f:
        f.write(header.getvalue())
        for source in sources:
            with open(source, "rb") as raw:
                while n := raw.readinto(buffer):
                    digest.update(view[:n])
                    f.write(view[:n])
        written = f.tell() - len(header.getvalue())
    if written != math.prod(shape):  # a row file cut short (a full disk) must not pass as a pack
        raise DataError(f"{path}: {written} bytes of rows where {math.prod(shape)} were expected; run again")
    return digest.hexdigest()


__all__ = ["RULES", "TASKS", "Labeller", "OtherSettingsError", "SlideJob", "TileSettings", "check_inputs", "decide", "make_tiles", "pair_inputs",
           "read_mpp_overrides", "split_groups", "tile_slide"]
