"""`pathnas-infer BUNDLE INPUTS... --out DIR`: inference on a workstation without PyTorch.

Imports only numpy, Pillow, tifffile and onnxruntime or openvino (tests prove it with torch
blocked). The bundle is verified first (its signature too, where trusted keys are
configured: signing.py) and refused if it does not verify. Files and folders are classified in
batches (CSV or JSON with class probabilities) or segmented (mask PNGs). Images much larger
than a tile (the training images' field of view) are tiled with overlap, streamed region by
region from TIFF, OpenSlide and DICOM pyramids at the level and scale that match the resolution
the model was trained at (preprocess.json's ``mpp``; the slide's own resolution from its file;
level 0 when either is unknown, and the row says so); empty background tiles are skipped;
reading runs ahead in threads while the model runs (tiles.py).

Per slide, in the output folder: a per-tile CSV and a heatmap PNG (tiles/), WSInfer's CSV
(model-outputs-csv/), GeoJSON that QuPath opens (model-outputs-geojson/), the mask of a
segmentation model (masks/); for the run, the results table and run_metadata.json (bundle hash
and signer, runtime and versions, settings, every input's resolution, level, tiles and seconds).
A folder run again skips the inputs already done with the same bundle and settings (resume.py).
A bad input (unreadable, too small, an empty folder) gets its own line in the output and on the
console, the run goes on, and the exit code says that some inputs failed. Every output is
written atomically; two inputs of the same file name never share an output file.
"""
from __future__ import annotations

import argparse
import csv
import errno
import glob
import hashlib
import os
import sys
import time
from array import array
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathnas.errors import ConfigError, UserError
from pathnas.io import atomic_path, read_json, sha256_file, write_bytes_atomic, write_json_atomic

from . import progress, resume, wsinfer
from .answers import pixel_mm2, slide_answers
from .claims import (CLAIM_TIMEOUT_S, HEARTBEAT_S, Claim, Claims, Holder, Superseded, Worker, in_shard, parse_shard,
                     shard_from_environment, sweep_stale_temporaries)
from .footprint import runtime_versions
from .geojson import PALETTE, FeatureWriter, mask_features, tile_feature
from .images import DICOM, IMAGE_EXTENSIONS, SLIDE_EXTENSIONS, InputError, choose_level, open_image, tissue_mask
from .manifest import MANIFEST, BundleError, verify
from .overlay import Overview, png_bytes, thumbnail
from .runtimes import BUNDLE_BACKENDS, open_runner
from .signing import TrustedKeys, load_trusted_keys
from .summary import NO_TISSUE, OK, RUN_METADATA, now, results_path, write_summary, write_worker
from .tiles import grid_size, read_batches

EXIT_INPUT_FAILURES = 1
# An image resized whole is decoded whole first: beyond this, only tiling reads it safely.
MAX_WHOLE_SIDE_PX = 10_000
WSINFER_CSV_DIR, GEOJSON_DIR = "model-outputs-csv", "model-outputs-geojson"  # WSInfer's folder names
THUMBNAIL_DIR, SLIDE_DIR = "thumbnails", "slides"
# a row's files: all must exist to skip it
OUTPUT_FIELDS = ("tile_csv", "wsinfer_csv", "geojson", "heatmap", "mask", "thumbnail", "slide_json")
FINAL = (OK, NO_TISSUE)  # statuses that are a slide's answer: a re-run skips them (an error is tried again)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
SKIPPED = "done before with this bundle and these settings; skipped"


PREPROCESS_EXPECTED = {"channel_order": "RGB", "layout": "NCHW"}


def _checked_preprocess(path: Path) -> dict:
    """preprocess.json, refused (BundleError naming the field) when it asks for what this runtime does not do."""
    pre = read_json(path, "bundle preprocessing")
    for key in ("input_size", "mean", "std", "scale"):
        if key not in pre:
            raise BundleError(f"{path}: field {key!r} is missing")
    for key, expected in PREPROCESS_EXPECTED.items():
        if pre.get(key, expected) != expected:
            raise BundleError(f"{path}: {key} {pre[key]!r} is not supported (allowed: {expected!r})")
    if len(pre["mean"]) != 3 or len(pre["std"]) != 3:
        raise BundleError(f"{path}: mean and std need 3 values (RGB)")
    for key in ("mpp", "image_px"):
        value = pre.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise BundleError(f"{path}: {key} {value!r} must be a positive number (or null: not recorded)")
    return pre


def open_model_runner(path: str | Path, backend: str, threads: int | None = None, device: str = "cpu"):
    """The runner a bundle's model runs on. Its runtime's idle workers do not spin: spinning, they
    took the CPU from the slide's reader threads decoding the next tiles. benchmarks/
    slide_throughput.py (2 cores, 2 threads, batch 8, 3360 px), slide tiles/s over pure inference:
    paper ShuffleNet 0.73-0.82 spinning, 0.81-0.92 not; the small one 0.53-0.58 and 0.68-0.79."""
    return open_runner(path, backend, threads, provider=device, spin=False)


class Model:
    """A model, its preprocessing and labels; ``from_bundle`` loads a verified bundle's."""

    def __init__(self, runner, pre: dict, labels: list[str], task: str, tile_px: int | None = None,
                 where: str = "the model", labels_from: str = "the labels"):
        self.runner, self.pre, self.labels, self.task = runner, pre, list(labels), task
        self.size = int(pre["input_size"])
        # Training resized whole images of the data set to the input size, so a slide is cut into
        # tiles of the training images' native size and resolution (when recorded), then resized.
        self.tile_px = int(pre.get("image_px") or tile_px or self.size)
        self.mpp = pre.get("mpp")
        # (pixel * scale - mean) / std as one multiply and one subtract, in place: this runs on every tile
        std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
        self._gain = np.float32(pre["scale"]) / std
        self._offset = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1) / std
        # One inference now (it warms the runtime up too): a model whose outputs do not match the labels
        # would otherwise have its scores silently paired with the wrong class names.
        out = self.runner.run(np.zeros((1, 3, self.size, self.size), np.float32))
        if out.ndim < 2 or out.shape[1] != len(self.labels) or (self.task == "segment") != (out.ndim == 4):
            raise BundleError(f"{where}: the model outputs shape {tuple(out.shape)}, which does not fit a "
                              f"{self.task} model of the {len(self.labels)} classes in {labels_from}")

    @classmethod
    def from_bundle(cls, bundle: Path, runtime: str = "auto", threads: int | None = None, device: str = "cpu",
                    trusted: TrustedKeys | None = None, cores: int | None = None) -> "Model":
        """The bundle's model, after the bundle verified (BundleError otherwise); ``threads`` default to its
        profile's, at most ``cores`` (the model's threads beyond the cores only take turns with the readers)."""
        verified = verify(bundle, trusted)
        manifest = verified.manifest
        pre = _checked_preprocess(bundle / manifest["preprocess"])
        labels = read_json(bundle / manifest["labels"], "bundle labels", kind=list)
        artifacts = manifest["model"]["artifacts"]
        wanted = None if runtime == "auto" else runtime  # a backend (argparse allowed only BUNDLE_BACKENDS)
        # verify() made sure the default is one of the hashed artifacts
        chosen = next(a for a in artifacts if a["path"] == manifest["model"]["default"]) \
            if wanted is None else next((a for a in artifacts if a["backend"] == wanted), None)
        if chosen is None:
            raise BundleError(f"{bundle}: holds no {runtime} model (it has: {', '.join(a['backend'] for a in artifacts)})")
        path = bundle / chosen["path"]
        threads_from = "command line" if threads else "the bundle's device profile"
        if not threads:
            threads = manifest["profile"].get("threads") or None
            if threads and cores and threads > cores:
                threads, threads_from = cores, f"the bundle's device profile ({threads}), at most the {cores} cores"
        model = cls(open_model_runner(path, chosen["backend"], threads, device), pre, labels, manifest["task"],
                    (manifest.get("dataset") or {}).get("image_size"), str(path), manifest["labels"])
        model.manifest, model.signature, model.artifact, model.threads = manifest, verified.signature, chosen, threads
        model.threads_from = threads_from
        model.bundle_sha256 = sha256_file(bundle / MANIFEST)  # the manifest hashes every other file
        return model

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 3xSxS uint8: resized to the input size (bilinear), channels first. The per-image
        half of preprocessing (a slide's reader threads run it on every tile); ``normalize`` is the other."""
        if rgb.shape[:2] != (self.size, self.size):
            rgb = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.BILINEAR))
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """Nx3xSxS uint8 (``prepare``'s, stacked) -> float32 as preprocess.json says: scale, mean/std, in one
        pass over the batch. A float array per tile (600 KB at 224 px), copied into the batch after, took
        twice the CPU (benchmarks/slide_throughput.py --read-costs): time the readers took from the model."""
        x = batch.astype(np.float32)
        x *= self._gain
        x -= self._offset
        return x

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """HxWx3 uint8 images -> Nx3xSxS float32, as preprocess.json says (bilinear resize, scale, mean/std)."""
        return self.normalize(np.stack([self.prepare(rgb) for rgb in images]))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x C) or per-pixel probabilities (N x C x H x W)."""
        logits = self.runner.run(np.ascontiguousarray(batch, np.float32))
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def collect_inputs(args: list[str]) -> tuple[list[Path], list[dict]]:
    """Image paths from files and folders; a missing path or an empty folder is a failure line.

    A DICOM slide is a folder of .dcm files (one per level), so a folder's .dcm files are one input."""
    files, failures = [], []
    suffixes = IMAGE_EXTENSIONS | SLIDE_EXTENSIONS
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            dicom_folders: set[Path] = set()
            for p in found:
                if p.suffix.lower() == DICOM:
                    if p.parent in dicom_folders:
                        continue
                    dicom_folders.add(p.parent)
                files.append(p)
            if not found:
                failures.append({"input": str(path), "status": "error", "error": f"{path}: folder holds no images"})
        elif path.is_file():
            files.append(path)
        else:
            failures.append({"input": str(path), "status": "error", "error": f"{path}: no such file or folder"})
    return list(dict.fromkeys(files)), failures


class SlideBatch:
    """One worker's part of a batch: each input is claimed (claims.py), run through the model, its outputs
    and its per-slide record written, and let go; ``rows`` holds what this worker did or found done.

    ``tiled`` and ``whole_images`` run the model and write an input's outputs; ``process`` is the
    worker's loop over its inputs, coming back to those another live worker holds until they are
    done or their holder is found gone."""

    def __init__(self, model: Model, args, out_dir: Path, names: dict[Path, str] | None = None,
                 claims: Claims | None = None, worker: Worker | None = None, run_key: dict | None = None,
                 say=print, bar=None):
        self.model, self.args, self.out_dir = model, args, Path(out_dir)
        self.names = names or {}
        self.csv_dir, self.geojson_dir = self.out_dir / WSINFER_CSV_DIR, self.out_dir / GEOJSON_DIR
        self.thumbnail_dir, self.slide_dir = self.out_dir / THUMBNAIL_DIR, self.out_dir / SLIDE_DIR
        self.claims, self.worker, self.run_key = claims, worker, run_key
        self.say, self.bar = say, bar
        self.started = time.time()  # a record written since then is this batch's (another worker's)
        self.rows: list[dict] = []
        self.done_here = 0  # inputs this worker finished (which ones: their records name the worker)
        self.skipped = 0
        self.small: list[tuple[Path, np.ndarray, str, str, Claim | None]] = []  # images awaiting a full batch
        self.on_finish = lambda: None  # after every input this worker finishes (its worker record)

    def _row(self, path: Path, probs: np.ndarray, extra: dict | None = None) -> dict:
        labels = self.model.labels
        row = {"input": str(path), "status": OK, "error": "", "prediction": labels[int(probs.argmax())]}
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(labels, probs)})
        row.update(extra or {})
        return row

    def output_stem(self, path: Path) -> str:
        return self.names.get(path) or output_names([path])[path]

    def _mask_path(self, stem: str) -> Path:
        return Path(self.args.mask_dir) / f"{stem}_mask.png"

    def _mask_geojson(self, stem: str, mask: np.ndarray, scale: float) -> Path:
        path = self.geojson_dir / f"{stem}.geojson"
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            writer = FeatureWriter(f)
            for feature in mask_features(mask, self.model.labels, scale):
                writer.add(feature)
            writer.close()
        return path

    def whole_images(self, items: list[tuple[Path, np.ndarray, str]]) -> list[dict]:
        """Batched inference of images that fit the model (resized to the input size); their rows."""
        rows = []
        for start in range(0, len(items), self.args.batch_size):
            chunk = items[start:start + self.args.batch_size]
            probs = self.model.predict(self.model.preprocess([rgb for _, rgb, _ in chunk]))
            for (path, rgb, note), p in zip(chunk, probs):
                if self.model.task == "segment":
                    mask = p.argmax(0).astype(np.uint8)
                    mask = np.asarray(Image.fromarray(mask).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
                    stem = self.output_stem(path)
                    write_bytes_atomic(self._mask_path(stem), png_bytes(mask))
                    rows.append({"input": str(path), "status": OK, "error": "", "note": note,
                                 "mask": str(self._mask_path(stem)), "geojson": str(self._mask_geojson(stem, mask, 1.0)),
                                 "foreground_pct": round(100 * float((mask > 0).mean()), 3)})
                else:
                    rows.append(self._row(path, p, {"note": note}))
        return rows

    def tiled(self, path: Path, source, plan: "ReadPlan", claim: Claim | None = None) -> dict:
        """Overlapping tiles at the planned level, background skipped; the row, and the slide's files:
        per-tile CSV, WSInfer's CSV, GeoJSON for QuPath, heatmap (and mask), thumbnail, per-slide JSON.

        Tiles are read ahead by a pool of threads while the model runs (tiles.py). Memory stays
        bounded: tiles are read as they are needed, the per-tile files are streamed to their
        (atomic) files, the overview is painted from the tiles at a fixed small size, and only
        the per-tile positions and scores are kept, packed (8 + 4 x classes bytes per tile).
        Every position written is in level-0 pixels (what slide viewers show). ``claim`` is
        renewed as the batches go (its heartbeat), and raises Superseded if the slide was taken over.
        """
        labels, segment, args = self.model.labels, self.model.task == "segment", self.args
        reader, tile_px, downsample = source.reader(plan.level), plan.tile, source.levels[plan.level].downsample
        overview = Overview(reader.height, reader.width, args.heatmap_size)
        mask = np.zeros(overview.shape, np.uint8) if segment else None
        stem = self.output_stem(path)
        files = {"tile_csv": Path(args.tile_dir) / f"{stem}_tiles.csv"}
        if not segment:
            files.update(wsinfer_csv=self.csv_dir / f"{stem}.csv", geojson=self.geojson_dir / f"{stem}.geojson")
        positions, scores = array("q"), array("f")  # compact: a slide may have 10^5-10^6 tiles
        total = tissue = 0
        side0 = round(tile_px * downsample)
        bar = progress.bar(grid_size(reader.height, reader.width, tile_px, args.tile_overlap), path.name, "tile",
                           position=1, leave=False)
        start = time.perf_counter()
        with ExitStack() as stack:
            out = {k: stack.enter_context(open(stack.enter_context(atomic_path(p)), "w", newline=""))
                   for k, p in files.items()}
            tiles_csv = csv.writer(out["tile_csv"])
            tiles_csv.writerow(["y", "x", "tissue_fraction"] + [f"{'area' if segment else 'prob'}_{c}" for c in labels])
            if not segment:
                wsinfer_csv, features = csv.writer(out["wsinfer_csv"]), FeatureWriter(out["geojson"])
                wsinfer_csv.writerow(wsinfer.csv_header(labels))

            def paint(y: int, x: int, tile: np.ndarray) -> None:  # called from the reader threads
                overview.paint(overview.image, y, x, tile)

            for batch in read_batches(reader, tile_px, args.tile_overlap, args.min_tissue, self.model.prepare,
                                      self.model.normalize, args.batch_size, args.reader_threads, paint):
                if claim is not None:
                    claim.beat()
                total += batch.seen
                bar.update(batch.seen)
                if not batch.where:
                    continue
                tissue += len(batch.where)
                for (y, x, frac), p in zip(batch.where, self.model.predict(batch.pixels)):
                    if segment:  # per-class share of the tile's pixels, and the mask for the overview
                        tile_mask = Image.fromarray(p.argmax(0).astype(np.uint8))
                        overview.paint(mask, y, x, np.asarray(tile_mask.resize((tile_px, tile_px), Image.NEAREST)))
                        p = p.reshape(p.shape[0], -1).mean(1)
                    x0, y0 = round(x * downsample), round(y * downsample)
                    tiles_csv.writerow([y0, x0, round(frac, 4), *(round(float(v), 6) for v in p)])
                    if not segment:
                        wsinfer_csv.writerow(wsinfer.csv_row(x0, y0, side0, p))
                        features.add(tile_feature(x0, y0, side0, p, labels))
                    positions.extend((y, x))
                    scores.extend(p.tolist())
            if not segment:
                features.close()
        bar.close()
        seconds = time.perf_counter() - start
        note = "; ".join(filter(None, [source.note, plan.note]))
        extra = {"note": note, "tiles": total, "tissue_tiles": tissue, "background_tiles": total - tissue,
                 **{k: str(v) for k, v in files.items()}, "level": plan.level, "downsample": round(downsample, 4),
                 "slide_mpp": source.mpp, "read_mpp": plan.read_mpp, "tile_px": tile_px, "tile_px_level0": side0,
                 "seconds": round(seconds, 3), "tiles_per_s": round(tissue / seconds, 1) if seconds > 0 else None}
        if segment:
            write_bytes_atomic(self._mask_path(stem), png_bytes(mask))
            mask_downsample = overview.step * downsample  # from level 0
            extra.update(mask=str(self._mask_path(stem)), mask_downsample=round(mask_downsample, 4),
                         geojson=str(self._mask_geojson(stem, mask, mask_downsample)))
        per_tile = np.frombuffer(scores, np.float32).reshape(tissue, len(labels))
        where = np.frombuffer(positions, np.int64).reshape(tissue, 2)
        # the slide-level answers, counted on the overview (answers.py), and the thumbnail that shows them
        on_tissue = tissue_mask(overview.image)
        classes = mask.astype(np.int16) if segment else overview.class_map(where, per_tile, tile_px)
        figures, per_class = slide_answers(labels, per_tile, on_tissue, classes,
                                           pixel_mm2(overview.step, downsample, source.mpp), segment)
        extra.update(figures)
        shown = np.where(classes > 0, classes, -1) if segment else classes
        thumb = self.thumbnail_dir / f"{stem}.png"
        write_bytes_atomic(thumb, png_bytes(thumbnail(overview.image, shown, PALETTE, None if segment else on_tissue)))
        extra["thumbnail"] = str(thumb)
        if not tissue:
            row = {"input": str(path), "status": NO_TISSUE,
                   "error": f"{path}: no tissue found: all {total} tiles are background (a blank slide is usually a "
                            "scanning error: check the scan)", "prediction": "", **extra}
        else:
            mean = per_tile.mean(0)
            # The heatmap shows the most likely class; for segmentation the most frequent non-background one.
            shown_class = int(mean[1:].argmax()) + 1 if segment and len(labels) > 1 else int(mean.argmax())
            heatmap = Path(args.tile_dir) / f"{stem}_heatmap_{labels[shown_class]}.png"
            write_bytes_atomic(heatmap, png_bytes(overview.heatmap(where, per_tile[:, shown_class], tile_px)))
            extra["heatmap"] = str(heatmap)
            if segment:
                extra["foreground_pct"] = round(100 * float(1 - mean[0]), 3)
            row = self._row(path, mean, extra)
        slide_json = self.slide_dir / f"{stem}.json"
        write_json_atomic(slide_json, {**row, "area_unit": "mm2 (unknown: the slide states no resolution)"
                                       if source.mpp is None else "mm2", "classes": per_class})
        row["slide_json"] = str(slide_json)
        return row

    # -- the worker's loop --------------------------------------------------------------------------------

    def process(self, files: list[Path]) -> None:
        """Every input once: done here, found done (before, or by another worker of this batch), or failed.
        Inputs another live worker holds are come back to (every heartbeat, at most every 5 s) until they
        are done or their holder is found gone (then taken over)."""
        pending, waiting_said = list(files), False
        poll = min(self.claims.heartbeat, 5.0) if self.claims else 0.0
        while pending:
            held = [path for path in pending if not self.attempt(path)]
            self.flush_small()
            if held and len(held) == len(pending):
                if not waiting_said:
                    self.say(f"waiting for {len(held)} input(s) other workers hold (they are done by them, or "
                             f"taken over once a holder is gone)")
                    waiting_said = True
                time.sleep(poll)
            pending = held

    def attempt(self, path: Path) -> bool:
        """Do ``path`` if no other worker holds it; False while a live worker does."""
        name = self.output_stem(path)
        try:
            key = resume.input_key(self.run_key, path)
        except FileNotFoundError:
            self._gone(path)
            return True
        if self._found_done(path, name, key):
            return True
        claim = self.claims.claim(name) if self.claims is not None else None
        if isinstance(claim, Holder):
            return False
        try:
            if self._found_done(path, name, key):  # finished by its last holder before this claim
                if claim is not None:
                    claim.release()
                return True
            if claim is not None and claim.generation > 0:
                self._sweep_slide(name)
            self._work(path, name, key, claim)
        except Superseded as err:
            self.say(f"{path}: {err}; left to it")
            self._settled()
        except BaseException:
            if claim is not None:
                claim.release()
            raise
        return True

    def _found_done(self, path: Path, name: str, key: str) -> bool:
        if self.args.redo:  # only what a worker of this batch did counts
            row = resume.done_row(self.out_dir, name, key, OUTPUT_FIELDS, since=self.started, final=())
        else:
            row = resume.done_row(self.out_dir, name, key, OUTPUT_FIELDS, since=self.started, final=FINAL)
        if row is None:
            return False
        self.rows.append({**row, "skipped_done": True})
        self.skipped += 1
        by_peer = resume.written_since(self.out_dir, name, self.started)
        self.say(f"{path}: {'done by another worker of this batch; skipped' if by_peer else SKIPPED}")
        self._settled()
        return True

    def output_files(self, stem: str) -> list[str]:
        """The names of every file an input's outputs and record are written to (their temporaries are
        ``.<name>.<random>.tmp`` beside them)."""
        return [f"{stem}_tiles.csv", f"{stem}.csv", f"{stem}.geojson", f"{stem}_mask.png", f"{stem}.png",
                f"{stem}.json"] + [f"{stem}_heatmap_{label}.png" for label in self.model.labels]

    def _sweep_slide(self, stem: str) -> None:
        """The hidden temporaries of a slide taken over from a worker found gone: it wrote them, nobody else."""
        folders = {Path(self.args.tile_dir), Path(self.args.mask_dir), self.csv_dir, self.geojson_dir,
                   self.thumbnail_dir, self.slide_dir, self.out_dir / resume.DONE}
        for folder in folders:
            for name in self.output_files(stem):
                for tmp in folder.glob(f".{glob.escape(name)}.*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _gone(self, path: Path) -> None:
        self.say(f"{path}: no longer exists (removed after the batch started): left out")
        self._settled()

    def _settled(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def _work(self, path: Path, name: str, key: str, claim: Claim | None) -> None:
        model, source = self.model, None
        try:
            source = open_image(path)
            h, w = source.height, source.width
            if h < model.size or w < model.size:
                raise InputError(f"{path}: image is {w}x{h}, smaller than the model input {model.size}x{model.size}")
            plan = plan_reading(source, model.mpp, self.args.tile_size or model.tile_px)
            fits_a_tile = min(h, w) >= plan.tile0
            if fits_a_tile and (self.args.tile == "always" or (self.args.tile == "auto" and max(h, w) > 2 * plan.tile0)):
                self.say(f"{path}: {plan.note}")
                self.finish(path, name, key, claim, self.tiled(path, source, plan, claim))
            elif max(h, w) > MAX_WHOLE_SIDE_PX:
                raise InputError(f"{path}: image is {w}x{h}, too large to resize whole (over {MAX_WHOLE_SIDE_PX} "
                                 "px); tile it (--tile auto)")
            else:
                self.small.append((path, source.read_region(0, 0, h, w), source.note, key, claim))
                if len(self.small) >= self.args.batch_size:
                    self.flush_small()
        except (Superseded, KeyboardInterrupt):
            raise
        except OSError as err:
            if err.errno in DISK_FULL:  # not the input's fault: it is left for the next run (run() says so)
                raise
            self._failed(path, name, key, claim, err)
        except Exception as err:  # a decoder failing on one file must not stop the others
            self._failed(path, name, key, claim, err)
        finally:
            if source is not None:
                source.close()

    def _failed(self, path: Path, name: str, key: str, claim: Claim | None, err: Exception) -> None:
        if not path.exists():
            if claim is not None:
                claim.release()
            return self._gone(path)
        text = str(err) if isinstance(err, InputError) else f"{path}: {type(err).__name__}: {err}"
        self.finish(path, name, key, claim, {"input": str(path), "status": "error", "error": text})

    def flush_small(self) -> None:
        """Run the images waiting for a full batch, and finish each."""
        if not self.small:
            return
        small, self.small = self.small, []
        try:
            rows = self.whole_images([(path, rgb, note) for path, rgb, note, _, _ in small])
        except BaseException:
            self.small = small  # released by release_held
            raise
        for (path, _, _, key, claim), row in zip(small, rows):
            try:
                self.finish(path, self.output_stem(path), key, claim, row)
            except Superseded as err:
                self.say(f"{path}: {err}; left to it")

    def release_held(self) -> None:
        """Let go of the inputs still waiting for a batch (the run is stopping)."""
        for *_, claim in self.small:
            if claim is not None:
                claim.release()
        self.small = []

    def finish(self, path: Path, name: str, key: str, claim: Claim | None, row: dict) -> None:
        """The input's record, written last (its outputs are in place), then its claim let go."""
        if claim is not None:
            claim.beat(force=True)  # Superseded if another worker took it over meanwhile: theirs to record
        resume.mark_done(self.out_dir, name, key, row, self.run_key, self.worker.ident if self.worker else "")
        if claim is not None:
            claim.release()
        self.rows.append(row)
        self.done_here += 1
        self.say(f"{path}: {_outcome(row)}")
        self.on_finish()
        self._settled()


@dataclass(frozen=True)
class ReadPlan:
    """How an input is read: at which pyramid level, in tiles of how many of that level's pixels, and why."""

    level: int
    tile: int  # tile side in pixels of ``level``
    tile0: float  # the same side in level-0 pixels
    read_mpp: float | None  # microns per pixel the tiles show after the resize (None: unknown)
    note: str


def plan_reading(source, model_mpp: float | None, tile_px: int) -> ReadPlan:
    """The level and tile size at which ``source`` shows the model what a training image showed:
    ``tile_px`` pixels at ``model_mpp`` microns per pixel; level 0 and ``tile_px`` when either
    resolution is unknown, with a note saying which."""
    level, scale = choose_level(source.levels, source.mpp, model_mpp)
    tile = max(1, int(round(tile_px * scale)))
    downsample = source.levels[level].downsample
    if source.mpp is None:
        why = f"; {source.mpp_source}" if source.mpp_source else ""
        note = (f"the image states no resolution{why}: read at level 0 (full resolution), as if it matched the "
                + (f"training resolution ({model_mpp:.3g} µm/px)" if model_mpp else "training images"))
        return ReadPlan(0, tile_px, float(tile_px), None, note)
    if model_mpp is None:
        return ReadPlan(0, tile_px, float(tile_px), None, f"image {source.mpp:.3g} µm/px ({source.mpp_source}); the "
                        "bundle does not record the training resolution: read at level 0 (full resolution)")
    note = (f"image {source.mpp:.3g} µm/px ({source.mpp_source}); model trained at {model_mpp:.3g} µm/px: level "
            f"{level} of {len(source.levels)} ({source.mpp * downsample:.3g} µm/px), tiles of {tile} px")
    if scale < 1 / 1.05:
        note += f", ENLARGED x{1 / scale:.2f}: the image is coarser than the training data"
    return ReadPlan(level, tile, tile * downsample, source.mpp * downsample * tile / tile_px, note)


def output_names(paths: list[Path]) -> dict[Path, str]:
    """Name stem of each input's outputs (mask, tile CSV, heatmap): its file stem, or, when another input
    shares that stem (a.png in two folders), the stem and a short hash of its full path. The same input
    gets the same name whatever else is in the run and in which order."""
    def stem(path: Path) -> str:  # a DICOM slide is its folder
        return path.parent.name if path.suffix.lower() == DICOM and path.parent.name else path.stem

    counts: dict[str, int] = {}
    for path in dict.fromkeys(paths):
        counts[stem(path).casefold()] = counts.get(stem(path).casefold(), 0) + 1
    names = {}
    for path in paths:
        if counts[stem(path).casefold()] == 1:
            names[path] = stem(path)
        else:
            digest = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:8]
            names[path] = f"{stem(path)}-{digest}"
    return names




class DiskFullError(UserError):
    """The output folder's disk is full: the worker stops, its unfinished input left for the next run."""


def _say(text: str, bar=None) -> None:
    """One line on the console, above the progress bars when they are drawn."""
    if bar is not None and hasattr(bar, "write"):
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _outcome(row: dict) -> str:
    if "tiles" in row:
        text = (f"{row['tissue_tiles']} of {row['tiles']} tiles classified, {row['background_tiles']} background, "
                f"in {row['seconds']:.1f} s ({row['tiles_per_s'] or 0:.0f} tiles/s)")
        if row["status"] == NO_TISSUE:
            return f"NO TISSUE: {text}: a blank slide (a scanning error?), counted as failed"
        return text
    if row["status"] != OK:
        return f"FAILED: {row['error']}"
    return "done"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM or container limit), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_reader_threads(cores: int, model_threads: int) -> int:
    """Reader threads beside a model on ``model_threads``: one (it reads and prepares about 800 tiles/s at
    224 px, 1.2 CPU ms a tile, more than the models infer on these CPUs), two where a core is left over."""
    return max(1, min(2, cores - model_threads))


def relative_names(files: list[Path], inputs: list[str]) -> dict[Path, str]:
    """Each input's path relative to the folder given on the command line (its name when given as a file),
    POSIX separators: what ``--shard`` hashes, the same on every machine mounting the folder."""
    folders = [Path(a) for a in inputs if Path(a).is_dir()]
    names = {}
    for path in files:
        under = next((f for f in folders if path.is_relative_to(f)), None)
        names[path] = path.relative_to(under).as_posix() if under is not None else path.name
    return names


def choose_shard(args) -> tuple[tuple[int, int] | None, str]:
    """(K, N) from --shard, else from a SLURM job array or a Kubernetes Indexed Job; and where from."""
    if args.shard:
        return parse_shard(args.shard), "--shard"
    found = shard_from_environment(dict(os.environ), args.shard_count)
    return found if found is not None else (None, "")


def run(args) -> int:
    """Inference as ``add_arguments`` describes; BundleError or ProviderError when it cannot start."""
    bundle = Path(args.bundle)
    trusted = load_trusted_keys(getattr(args, "trusted_key", None) or ())
    cores = available_cores()
    try:
        model = Model.from_bundle(bundle, args.runtime, args.threads, args.device, trusted, cores)
    except BundleError as err:
        raise BundleError(f"refusing to run: {err}") from None
    print(f"bundle {bundle}: {model.signature.text}", file=sys.stderr)
    out, out_dir = results_path(args.out)
    if args.format is None:
        args.format = "json" if out.suffix.lower() == ".json" else "csv"
    profile = model.manifest["profile"]
    args.batch_size = args.batch_size or int(profile.get("slide_batch_size") or profile.get("batch_size") or 1)
    readers_from = "command line" if args.reader_threads is not None else f"{cores} cores, {model.threads} for the model"
    if args.reader_threads is None:
        args.reader_threads = default_reader_threads(cores, model.threads or cores)
    for attr, default in (("mask_dir", out_dir / "masks"), ("tile_dir", out_dir / "tiles")):
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    files, failures = collect_inputs(args.inputs)
    names = output_names(files)  # of every input of the batch, every shard's: what the summary covers
    shard, shard_from = choose_shard(args)
    if shard is not None:
        relative = relative_names(files, args.inputs)
        mine = [f for f in files if in_shard(relative[f], shard)]
        print(f"shard {shard[0]}/{shard[1]} ({shard_from}): {len(mine)} of {len(files)} input(s)", file=sys.stderr)
        files = mine
    tile_px = args.tile_size or model.tile_px
    settings = {"tile": args.tile, "tile_size": tile_px, "tile_overlap": args.tile_overlap,
                "min_tissue": args.min_tissue, "heatmap_size": args.heatmap_size, "device": args.device}
    run_key = resume.run_key(model.bundle_sha256, model.artifact["path"], settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker.here(run_key)
    overall = progress.bar(len(files), "inputs", "input", position=0)
    say = lambda text: _say(text, overall)  # noqa: E731
    claims = Claims(out_dir, worker, args.heartbeat, args.claim_timeout, say)
    claims.refuse_other_batches()
    batch = SlideBatch(model, args, out_dir, names, claims, worker, run_key, say, overall)
    owners = {file: stem for stem in names.values() for file in batch.output_files(stem)}
    swept = sweep_stale_temporaries(out_dir, claims, owners)
    if swept:
        say(f"removed {len(swept)} temporary file(s) a killed run left in {out_dir}")
    meta = {"bundle": str(bundle), "bundle_sha256": model.bundle_sha256, "signature": model.signature.status,
            "signed_by": model.signature.key, "signature_text": model.signature.text, "model": model.artifact,
            "task": model.task, "classes": model.labels, "runtime": model.runner.provider, "device": args.device,
            "cores": cores, "threads": model.threads, "threads_from": model.threads_from,
            "reader_threads": args.reader_threads, "reader_threads_from": readers_from,
            "batch_size": args.batch_size, "versions": runtime_versions()}
    clock = time.perf_counter()

    def record(finished: bool) -> None:
        write_worker(out_dir, worker.ident, {
            **worker.record(), "run": run_key, "meta": meta, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "threads": model.threads, "reader_threads": args.reader_threads, "finished": finished,
            "finished_at": now() if finished else None, "seconds": round(time.perf_counter() - clock, 3),
            "slides_done": batch.done_here, "skipped_done": batch.skipped, "input_failures": failures})

    batch.on_finish = lambda: record(False)
    record(False)
    for row in failures:
        say(f"{row['input']}: FAILED: {row['error']}")
    try:
        batch.process(files)
    except BaseException as err:
        batch.release_held()
        overall.close()
        try:  # what was done stays accounted for
            record(False)
            write_summary(out, out_dir, False, args.format, failures, set(names.values()))
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise DiskFullError(f"no space left on the device writing {err.filename or out_dir}: the input being "
                                "done is left for the next run (nothing of it was kept; every input finished "
                                "before is); free space and run again") from None
        raise
    overall.close()
    record(True)
    write_summary(out, out_dir, True, args.format, failures, set(names.values()))
    mine = failures + batch.rows
    failed = [r for r in mine if r["status"] != OK]
    print(f"{len(mine) - len(failed)} input(s) done ({batch.skipped} done before), {len(failed)} failed; results in "
          f"{out}, run record in {out_dir / RUN_METADATA}", file=sys.stderr)
    for r in failed:
        print(f"  failed: {r['error']}", file=sys.stderr)
    return EXIT_INPUT_FAILURES if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a bundle folder written by `pathnas-edge package`")
    p.add_argument("inputs", nargs="+", help="image files, slides or folders of them")
    p.add_argument("--out", required=True,
                   help="a folder (results.csv, run_metadata.json and every input's outputs go in it), or a results "
                        "file (.csv or .json) with the rest beside it; any number of workers may share it")
    p.add_argument("--format", choices=["csv", "json"], default=None, help="default: from --out's extension")
    p.add_argument("--runtime", choices=["auto", *BUNDLE_BACKENDS], default="auto",
                   help="the backend of the bundle's model to run (default: the bundle's own)")
    p.add_argument("--device", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="onnxruntime execution provider (fails rather than falling back to the CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: the bundle's device profile's, at most this machine's cores)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per inference (default: the bundle's device "
                                                                "profile's slide batch)")
    p.add_argument("--reader-threads", type=int, default=None,
                   help="threads reading and preparing tiles ahead of the model (0: read, then infer, in turns; "
                        "default: 1, or 2 where the model's threads leave 2 cores)")
    p.add_argument("--redo", action="store_true",
                   help="process every input again, even those done before with this bundle and these settings")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="do only the K-th of N shares of the inputs (by a hash of each one's path relative to the "
                        "folder given); default: from $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX when set")
    p.add_argument("--shard-count", type=int, default=None, metavar="N",
                   help="with $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job): the Job's completions")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, metavar="S",
                   help="seconds between renewals of this worker's claim on the slide it is doing")
    p.add_argument("--claim-timeout", type=float, default=CLAIM_TIMEOUT_S, metavar="S",
                   help="a claim not renewed for this long is taken over (on the same host also as soon as its "
                        "process is gone)")
    p.add_argument("--tile", choices=["auto", "always", "never"], default="auto",
                   help="auto: tile images larger than twice the tile size; always: every image at least one tile "
                        "large; never: resize every image whole")
    p.add_argument("--tile-size", type=int, default=None,
                   help="tile side in pixels at the training resolution, each tile resized to the model input "
                        "(default: the training images' size recorded in the bundle, else the model input size); "
                        "scaled to the slide's resolution when both are known")
    p.add_argument("--tile-overlap", type=float, default=0.25)
    p.add_argument("--min-tissue", type=float, default=0.2, help="skip tiles with less tissue than this share")
    p.add_argument("--heatmap-size", type=int, default=512)
    p.add_argument("--mask-dir", default=None, help="segmentation masks (default: OUT/masks)")
    p.add_argument("--tile-dir", default=None, help="per-tile CSVs and heatmaps (default: OUT/tiles)")
    add_trust_argument(p)


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    from .signing import ENV_TRUSTED_KEYS, SYSTEM_TRUSTED_KEYS

    p.add_argument("--trusted-key", action="append", type=Path, default=None, metavar="PUB",
                   help=f"accept only bundles signed by this public key (a .pub file or a folder of them; "
                        f"repeatable; default: ${ENV_TRUSTED_KEYS}, else {SYSTEM_TRUSTED_KEYS} if it exists, "
                        "else unsigned bundles are accepted and said to be unsigned)")


def check_arguments(cli: argparse.ArgumentParser, args) -> None:
    """Usage errors argparse cannot see (exit 2 with the usage line)."""
    if args.batch_size is not None and args.batch_size < 1:
        cli.error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.tile_size is not None and args.tile_size < 8:
        cli.error(f"--tile-size {args.tile_size}: must be at least 8 pixels")
    if not 0 <= args.tile_overlap < 1:
        cli.error(f"--tile-overlap {args.tile_overlap}: must be in [0, 1)")
    if not 0 <= args.min_tissue <= 1:
        cli.error(f"--min-tissue {args.min_tissue}: must be in [0, 1]")
    if args.threads is not None and args.threads < 1:
        cli.error(f"--threads {args.threads}: must be at least 1")
    if args.reader_threads is not None and args.reader_threads < 0:
        cli.error(f"--reader-threads {args.reader_threads}: must be 0 or more")
    if args.shard is not None:
        try:
            parse_shard(args.shard)
        except ConfigError as err:
            cli.error(str(err))
    if args.shard_count is not None and args.shard_count < 1:
        cli.error(f"--shard-count {args.shard_count}: must be at least 1")
    if not 0 < args.heartbeat < args.claim_timeout:
        cli.error(f"--heartbeat {args.heartbeat:g} and --claim-timeout {args.claim_timeout:g}: need 0 < heartbeat < "
                  "claim timeout (a few heartbeats, so that a slow worker is not taken over)")
