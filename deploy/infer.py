"""`pathnas-infer BUNDLE INPUTS... --out results.csv`: inference on a workstation without PyTorch.

Imports only numpy, Pillow, tifffile and onnxruntime or openvino (tests prove it with torch
blocked). The bundle is verified first (its signature too, where trusted keys are
configured: signing.py) and refused if it does not verify. Files and folders are classified in
batches (CSV or JSON with class probabilities) or segmented (mask PNGs). Images much larger
than a tile (the training images' field of view) are tiled with overlap, streamed region by
region from TIFF and OpenSlide pyramids at the level and scale that match the resolution the
model was trained at (preprocess.json's ``mpp``; the slide's own resolution from its file;
level 0 when either is unknown, and the row says so); empty background tiles are skipped,
and a per-tile CSV and a heatmap PNG are written. A bad input (unreadable, too small, an
empty folder) gets its own line in the output, the run goes on, and the exit code says that
some inputs failed. Every output is written atomically; two inputs of the same file name
never share an output file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathnas.io import atomic_path, read_json, write_bytes_atomic, write_text_atomic

from .images import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS, InputError, choose_level, open_image, tile_grid, tissue_fraction
from .manifest import BundleError, verify
from .signing import TrustedKeys, load_trusted_keys
from .overlay import Overview, png_bytes
from .runners import open_runner

EXIT_INPUT_FAILURES = 1
# An image resized whole is decoded whole first: beyond this, only tiling reads it safely.
MAX_WHOLE_SIDE_PX = 10_000


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


class Model:
    """A verified bundle's model, its preprocessing and labels."""

    def __init__(self, bundle: Path, runtime: str = "auto", threads: int | None = None, device: str = "cpu",
                 trusted: TrustedKeys | None = None):
        verified = verify(bundle, trusted)
        self.manifest, self.signature = verified.manifest, verified.signature
        self.pre = _checked_preprocess(bundle / self.manifest["preprocess"])
        self.labels = read_json(bundle / self.manifest["labels"], "bundle labels", kind=list)
        self.task = self.manifest["task"]
        artifacts = self.manifest["model"]["artifacts"]
        wanted = {"auto": None, "onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
        # verify() made sure the default is one of the hashed artifacts
        chosen = next(a for a in artifacts if a["path"] == self.manifest["model"]["default"]) \
            if wanted is None else next((a for a in artifacts if a["backend"] == wanted), None)
        if chosen is None:
            raise BundleError(f"{bundle}: holds no {runtime} model (it has: {', '.join(a['backend'] for a in artifacts)})")
        path = bundle / chosen["path"]
        self.runner = open_runner(path, chosen["backend"], threads, device=device)
        self.artifact = chosen
        self.size = int(self.pre["input_size"])
        # Training resized whole images of the data set to the input size, so a slide is cut into
        # tiles of the training images' native size and resolution (when recorded), then resized.
        self.tile_px = int(self.pre.get("image_px") or (self.manifest.get("dataset") or {}).get("image_size")
                           or self.size)
        self.mpp = self.pre.get("mpp")
        self.mean = np.asarray(self.pre["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(self.pre["std"], np.float32).reshape(1, 3, 1, 1)
        # One inference now (it warms the runtime up too): a model whose outputs do not match the labels
        # would otherwise have its scores silently paired with the wrong class names.
        out = self.runner.run(np.zeros((1, 3, self.size, self.size), np.float32))
        if out.ndim < 2 or out.shape[1] != len(self.labels) or (self.task == "segment") != (out.ndim == 4):
            raise BundleError(f"{path}: the model outputs shape {tuple(out.shape)}, which does not fit a "
                              f"{self.task} model of the {len(self.labels)} classes in {self.manifest['labels']}")

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> 1x3xSxS float32, as preprocess.json says (bilinear resize, scale, mean/std)."""
        if rgb.shape[:2] != (self.size, self.size):
            rgb = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.BILINEAR))
        x = rgb.astype(np.float32).transpose(2, 0, 1)[None] * float(self.pre["scale"])
        return (x - self.mean) / self.std

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N x C) or per-pixel probabilities (N x C x H x W)."""
        logits = self.runner.run(np.ascontiguousarray(batch, np.float32))
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def collect_inputs(args: list[str]) -> tuple[list[Path], list[dict]]:
    """Image paths from files and folders; a missing path or an empty folder is a failure line."""
    files, failures = [], []
    suffixes = IMAGE_EXTENSIONS | SLIDE_EXTENSIONS
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                failures.append({"input": str(path), "status": "error", "error": "folder holds no images"})
            files += found
        elif path.is_file():
            files.append(path)
        else:
            failures.append({"input": str(path), "status": "error", "error": "no such file or folder"})
    return files, failures


class Runner:
    """Runs the model over the inputs and collects one result row per input."""

    def __init__(self, model: Model, args, names: dict[Path, str] | None = None):
        self.model, self.args = model, args
        self.rows: list[dict] = []
        self.names = names or {}

    def _row(self, path: Path, probs: np.ndarray, extra: dict | None = None) -> dict:
        labels = self.model.labels
        row = {"input": str(path), "status": "ok", "error": "", "prediction": labels[int(probs.argmax())]}
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(labels, probs)})
        row.update(extra or {})
        return row

    def _output_stem(self, path: Path) -> str:
        return self.names.get(path) or output_names([path])[path]

    def _mask_path(self, stem: str) -> Path:
        return Path(self.args.mask_dir) / f"{stem}_mask.png"

    def whole_images(self, items: list[tuple[Path, np.ndarray, str]]) -> None:
        """Batched inference of images that fit the model (resized to the input size)."""
        for start in range(0, len(items), self.args.batch_size):
            chunk = items[start:start + self.args.batch_size]
            probs = self.model.predict(np.concatenate([self.model.preprocess(rgb) for _, rgb, _ in chunk]))
            for (path, rgb, note), p in zip(chunk, probs):
                if self.model.task == "segment":
                    mask = p.argmax(0).astype(np.uint8)
                    mask = np.asarray(Image.fromarray(mask).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
                    mask_path = self._mask_path(self._output_stem(path))
                    write_bytes_atomic(mask_path, png_bytes(mask))
                    self.rows.append({"input": str(path), "status": "ok", "error": "", "note": note,
                                      "mask": str(mask_path),
                                      "foreground_pct": round(100 * float((mask > 0).mean()), 3)})
                else:
                    self.rows.append(self._row(path, p, {"note": note}))

    def tiled(self, path: Path, source, plan: "ReadPlan") -> None:
        """Overlapping tiles at the planned level; background skipped; per-tile CSV, heatmap, aggregate row.

        Memory stays bounded: tiles are read as they are needed, the per-tile CSV is streamed
        to its (atomic) file, the overview is painted from the tiles at a fixed small size, and
        only the per-tile positions and scores are kept, packed (8 + 4 x classes bytes per tile).
        Tile positions in the CSV are level-0 pixels (what slide viewers show).
        """
        labels, segment = self.model.labels, self.model.task == "segment"
        reader, tile_px, downsample = source.reader(plan.level), plan.tile, source.levels[plan.level].downsample
        overview = Overview(reader.height, reader.width, self.args.heatmap_size)
        mask = np.zeros(overview.shape, np.uint8) if segment else None
        stem = self._output_stem(path)
        tile_csv = Path(self.args.tile_dir) / f"{stem}_tiles.csv"
        positions, scores = array("q"), array("f")  # compact: a slide may have 10^5-10^6 tiles
        total = tissue = 0
        with atomic_path(tile_csv) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["y", "x", "tissue_fraction"] + [f"{'area' if segment else 'prob'}_{c}" for c in labels])
            batch, where = [], []

            def flush():
                if batch:
                    for (y, x, frac), p in zip(where, self.model.predict(np.concatenate(batch))):
                        if segment:  # per-class share of the tile's pixels, and the mask for the overview
                            tile_mask = Image.fromarray(p.argmax(0).astype(np.uint8))
                            overview.paint(mask, y, x, np.asarray(tile_mask.resize((tile_px, tile_px), Image.NEAREST)))
                            p = p.reshape(p.shape[0], -1).mean(1)
                        writer.writerow([round(y * downsample), round(x * downsample), round(frac, 4),
                                         *(round(float(v), 6) for v in p)])
                        positions.extend((y, x))
                        scores.extend(p.tolist())
                    batch.clear()
                    where.clear()

            for y, x in tile_grid(reader.height, reader.width, tile_px, self.args.tile_overlap, reader.block):
                total += 1
                tile = reader.read_region(y, x, tile_px, tile_px)
                overview.paint(overview.image, y, x, tile)
                frac = tissue_fraction(tile)
                if frac < self.args.min_tissue:
                    continue
                tissue += 1
                batch.append(self.model.preprocess(tile))
                where.append((y, x, frac))
                if len(batch) == self.args.batch_size:
                    flush()
            flush()
        note = "; ".join(filter(None, [source.note, plan.note]))
        extra = {"note": note, "tiles": total, "tissue_tiles": tissue, "tile_csv": str(tile_csv),
                 "level": plan.level, "read_mpp": plan.read_mpp, "tile_px": tile_px}
        if segment:
            write_bytes_atomic(self._mask_path(stem), png_bytes(mask))
            extra.update(mask=str(self._mask_path(stem)),
                         mask_downsample=round(overview.step * downsample, 4))  # from level 0
        if not tissue:
            extra["note"] = "; ".join(filter(None, [note, "no tissue found"]))
            self.rows.append({"input": str(path), "status": "ok", "error": "", "prediction": "", **extra})
            return
        per_tile = np.frombuffer(scores, np.float32).reshape(tissue, len(labels))
        mean = per_tile.mean(0)
        # The heatmap shows the most likely class; for segmentation the most frequent non-background one.
        shown = int(mean[1:].argmax()) + 1 if segment and len(labels) > 1 else int(mean.argmax())
        heatmap = Path(self.args.tile_dir) / f"{stem}_heatmap_{labels[shown]}.png"
        write_bytes_atomic(heatmap, png_bytes(overview.heatmap(np.frombuffer(positions, np.int64).reshape(tissue, 2), per_tile[:, shown], tile_px)))
        extra["heatmap"] = str(heatmap)
        if segment:
            extra["foreground_pct"] = round(100 * float(1 - mean[0]), 3)
        self.rows.append(self._row(path, mean, extra))


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
    counts: dict[str, int] = {}
    for path in dict.fromkeys(paths):
        counts[path.stem.casefold()] = counts.get(path.stem.casefold(), 0) + 1
    names = {}
    for path in paths:
        if counts[path.stem.casefold()] == 1:
            names[path] = path.stem
        else:
            digest = hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:8]
            names[path] = f"{path.stem}-{digest}"
    return names


def _csv(rows: list[dict], first: list[str]) -> str:
    fields = list(dict.fromkeys(first + [k for r in rows for k in r]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(args) -> int:
    """Inference as ``add_arguments`` describes; BundleError or ProviderError when it cannot start."""
    bundle = Path(args.bundle)
    trusted = load_trusted_keys(getattr(args, "trusted_key", None) or ())
    try:
        model = Model(bundle, args.runtime, args.threads, args.device, trusted)
    except BundleError as err:
        raise BundleError(f"refusing to run: {err}") from None
    print(f"bundle {bundle}: {model.signature.text}", file=sys.stderr)
    files, failures = collect_inputs(args.inputs)
    out = Path(args.out)
    if args.format is None:
        args.format = "json" if out.suffix.lower() == ".json" else "csv"
    for attr, default in (("mask_dir", out.parent / "masks"), ("tile_dir", out.parent / "tiles")):
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    runner = Runner(model, args, output_names(files))
    tile_px = args.tile_size or model.tile_px
    runner.rows += failures
    small: list[tuple[Path, np.ndarray, str]] = []
    for path in files:
        source = None
        try:
            source = open_image(path)
            h, w = source.height, source.width
            if h < model.size or w < model.size:
                raise InputError(f"{path}: image is {w}x{h}, smaller than the model input {model.size}x{model.size}")
            plan = plan_reading(source, model.mpp, tile_px)
            fits_a_tile = min(h, w) >= plan.tile0
            if fits_a_tile and (args.tile == "always" or (args.tile == "auto" and max(h, w) > 2 * plan.tile0)):
                print(f"{path}: {plan.note}", file=sys.stderr)
                runner.tiled(path, source, plan)
            elif max(h, w) > MAX_WHOLE_SIDE_PX:
                raise InputError(f"{path}: image is {w}x{h}, too large to resize whole (over {MAX_WHOLE_SIDE_PX} px); "
                                 "tile it (--tile auto)")
            else:
                small.append((path, source.read_region(0, 0, h, w), source.note))
        except InputError as err:
            runner.rows.append({"input": str(path), "status": "error", "error": str(err)})
        except Exception as err:  # a decoder failing on one file must not stop the others
            runner.rows.append({"input": str(path), "status": "error", "error": f"{path}: {type(err).__name__}: {err}"})
        finally:
            if source is not None:
                source.close()
        if len(small) >= args.batch_size:
            runner.whole_images(small)
            small = []
    runner.whole_images(small)
    rows = sorted(runner.rows, key=lambda r: r["input"])
    if args.format == "json":
        write_text_atomic(out, json.dumps({"bundle": str(bundle), "signature": model.signature.text,
                                           "model": model.artifact, "results": rows}, indent=2))
    else:
        first = ["input", "status", "error", "note", "prediction"] + [f"prob_{c}" for c in model.labels]
        write_text_atomic(out, _csv(rows, first))
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} input(s) done, {len(failed)} failed; results in {out}", file=sys.stderr)
    for r in failed:
        print(f"  failed: {r['error']}", file=sys.stderr)
    return EXIT_INPUT_FAILURES if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="a bundle folder written by `pathnas-edge package`")
    p.add_argument("inputs", nargs="+", help="image files, slides or folders of them")
    p.add_argument("--out", required=True, help="results file (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], default=None, help="default: from --out's extension")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino"], default="auto")
    p.add_argument("--device", choices=["cpu", "cuda", "tensorrt"], default="cpu",
                   help="onnxruntime execution provider (fails rather than falling back to the CPU)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
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
    p.add_argument("--mask-dir", default=None, help="segmentation masks (default: beside --out)")
    p.add_argument("--tile-dir", default=None, help="per-tile CSVs and heatmaps (default: beside --out)")
    add_trust_argument(p)


def add_trust_argument(p: argparse.ArgumentParser) -> None:
    from .signing import ENV_TRUSTED_KEYS, SYSTEM_TRUSTED_KEYS

    p.add_argument("--trusted-key", action="append", type=Path, default=None, metavar="PUB",
                   help=f"accept only bundles signed by this public key (a .pub file or a folder of them; "
                        f"repeatable; default: ${ENV_TRUSTED_KEYS}, else {SYSTEM_TRUSTED_KEYS} if it exists, "
                        "else unsigned bundles are accepted and said to be unsigned)")


def check_arguments(cli: argparse.ArgumentParser, args) -> None:
    """Usage errors argparse cannot see (exit 2 with the usage line)."""
    if args.batch_size < 1:
        cli.error(f"--batch-size {args.batch_size}: must be at least 1")
    if args.tile_size is not None and args.tile_size < 8:
        cli.error(f"--tile-size {args.tile_size}: must be at least 8 pixels")
    if not 0 <= args.tile_overlap < 1:
        cli.error(f"--tile-overlap {args.tile_overlap}: must be in [0, 1)")
    if not 0 <= args.min_tissue <= 1:
        cli.error(f"--min-tissue {args.min_tissue}: must be in [0, 1]")
