"""`pathnas-infer BUNDLE INPUTS... --out results.csv`: inference on a workstation without PyTorch.

Imports only numpy, Pillow, tifffile and onnxruntime or openvino (tests prove it with torch
blocked). The bundle is verified first and refused if it does not verify. Files and folders
are classified in batches (CSV or JSON with class probabilities) or segmented (mask PNGs).
Images much larger than the model input are tiled with overlap at native resolution, empty
background tiles are skipped, and a per-tile CSV and a heatmap PNG are written. A bad input
(unreadable, too small, an empty folder) gets its own line in the output, the run goes on,
and the exit code says that some inputs failed. Every output is written atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pathnas.io import atomic_path, write_bytes_atomic, write_text_atomic

from .images import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS, InputError, open_image, tile_grid, tissue_fraction
from .manifest import BundleError, verify

EXIT_INPUT_FAILURES = 1
EXIT_BAD_BUNDLE = 2


class Model:
    """A verified bundle's model, its preprocessing and labels."""

    def __init__(self, bundle: Path, runtime: str = "auto", threads: int | None = None):
        from pathnas.export.runtimes import OpenVinoRunner, OrtRunner

        self.manifest = verify(bundle)
        self.pre = json.loads((bundle / self.manifest["preprocess"]).read_text())
        self.labels = json.loads((bundle / self.manifest["labels"]).read_text())
        self.task = self.manifest["task"]
        artifacts = self.manifest["model"]["artifacts"]
        wanted = {"auto": None, "onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
        chosen = next((a for a in artifacts if a["path"] == self.manifest["model"]["default"]), artifacts[0]) \
            if wanted is None else next((a for a in artifacts if a["backend"] == wanted), None)
        if chosen is None:
            raise BundleError(f"{bundle}: holds no {runtime} model (it has: {', '.join(a['backend'] for a in artifacts)})")
        path = bundle / chosen["path"]
        self.runner = (OpenVinoRunner(path, "CPU", threads) if chosen["backend"] == "openvino"
                       else OrtRunner(path, "cpu", threads))
        self.artifact = chosen
        self.size = int(self.pre["input_size"])
        self.mean = np.asarray(self.pre["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(self.pre["std"], np.float32).reshape(1, 3, 1, 1)

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


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _heatmap(thumbnail: np.ndarray, scores: list[tuple[int, int, float]], tile: int, scale: float) -> np.ndarray:
    """The thumbnail with each tissue tile tinted red by its score (0..1)."""
    heat = np.zeros(thumbnail.shape[:2], np.float32)
    hits = np.zeros(thumbnail.shape[:2], np.float32)
    for y, x, score in scores:
        ys, xs = int(y / scale), int(x / scale)
        ye, xe = int((y + tile) / scale) + 1, int((x + tile) / scale) + 1
        heat[ys:ye, xs:xe] += score
        hits[ys:ye, xs:xe] += 1
    heat = np.divide(heat, hits, out=np.zeros_like(heat), where=hits > 0)[..., None]
    red = np.array([255, 0, 0], np.float32)
    alpha = 0.6 * heat
    return (thumbnail * (1 - alpha) + red * alpha).astype(np.uint8)


class Runner:
    def __init__(self, model: Model, args):
        self.model, self.args = model, args
        self.rows: list[dict] = []

    def _row(self, path: Path, probs: np.ndarray, extra: dict | None = None) -> dict:
        labels = self.model.labels
        row = {"input": str(path), "status": "ok", "error": "", "prediction": labels[int(probs.argmax())]}
        row.update({f"prob_{c}": round(float(p), 6) for c, p in zip(labels, probs)})
        row.update(extra or {})
        return row

    def whole_images(self, items: list[tuple[Path, np.ndarray]]) -> None:
        """Batched inference of images that fit the model (resized to the input size)."""
        for start in range(0, len(items), self.args.batch_size):
            chunk = items[start:start + self.args.batch_size]
            probs = self.model.predict(np.concatenate([self.model.preprocess(rgb) for _, rgb in chunk]))
            for (path, rgb), p in zip(chunk, probs):
                if self.model.task == "segment":
                    mask = p.argmax(0).astype(np.uint8)
                    mask = np.asarray(Image.fromarray(mask).resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST))
                    out = Path(self.args.mask_dir) / f"{path.stem}_mask.png"
                    write_bytes_atomic(out, _png(mask))
                    self.rows.append({"input": str(path), "status": "ok", "error": "", "mask": str(out),
                                      "foreground_pct": round(100 * float((mask > 0).mean()), 3)})
                else:
                    self.rows.append(self._row(path, p))

    def tiled(self, path: Path, reader) -> None:
        """Overlapping native-resolution tiles; background skipped; per-tile CSV, heatmap, aggregate row.

        Memory stays bounded: tiles are read as they are needed, the per-tile CSV is streamed
        to its (atomic) file, and only a small array of per-tile scores is kept for the heatmap.
        """
        size, labels = self.model.size, self.model.labels
        tile_csv = Path(self.args.tile_dir) / f"{path.stem}_tiles.csv"
        positions, scores = [], []
        total = 0
        with atomic_path(tile_csv) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["y", "x", "tissue_fraction"] + [f"prob_{c}" for c in labels])
            batch, where = [], []

            def flush():
                if batch:
                    for (y, x, frac), p in zip(where, self.model.predict(np.concatenate(batch))):
                        score = p if self.model.task == "classify" else p.reshape(p.shape[0], -1).mean(1)
                        writer.writerow([y, x, round(frac, 4), *(round(float(v), 6) for v in score)])
                        positions.append((y, x))
                        scores.append(score.astype(np.float32))
                    batch.clear()
                    where.clear()

            for y, x in tile_grid(reader.height, reader.width, size, self.args.tile_overlap):
                total += 1
                tile = reader.read_region(y, x, size, size)
                frac = tissue_fraction(tile)
                if frac < self.args.min_tissue:
                    continue
                batch.append(self.model.preprocess(tile))
                where.append((y, x, frac))
                if len(batch) == self.args.batch_size:
                    flush()
            flush()
        extra = {"tiles": total, "tissue_tiles": len(scores), "tile_csv": str(tile_csv)}
        if not scores:
            self.rows.append({"input": str(path), "status": "ok", "error": "", "prediction": "", **extra,
                              "note": "no tissue found"})
            return
        per_tile = np.stack(scores)
        mean = per_tile.mean(0)
        top = int(mean.argmax())
        thumb = reader.thumbnail(self.args.heatmap_size)
        scale = max(reader.height / thumb.shape[0], reader.width / thumb.shape[1])
        heat = _heatmap(thumb.astype(np.float32), [(y, x, float(s)) for (y, x), s in zip(positions, per_tile[:, top])],
                        size, scale)
        heatmap = Path(self.args.tile_dir) / f"{path.stem}_heatmap_{labels[top]}.png"
        write_bytes_atomic(heatmap, _png(heat))
        self.rows.append(self._row(path, mean, {**extra, "heatmap": str(heatmap)}))


def _csv(rows: list[dict], first: list[str]) -> str:
    fields = list(dict.fromkeys(first + [k for r in rows for k in r]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run(args) -> int:
    bundle = Path(args.bundle)
    try:
        model = Model(bundle, args.runtime, args.threads)
    except BundleError as err:
        print(f"error: refusing to run: {err}", file=sys.stderr)
        return EXIT_BAD_BUNDLE
    files, failures = collect_inputs(args.inputs)
    out = Path(args.out)
    for attr, default in (("mask_dir", out.parent / "masks"), ("tile_dir", out.parent / "tiles")):
        if getattr(args, attr) is None:
            setattr(args, attr, default)
    runner = Runner(model, args)
    runner.rows += failures
    small: list[tuple[Path, np.ndarray]] = []
    for path in files:
        reader = None
        try:
            reader = open_image(path)
            h, w = reader.height, reader.width
            if h < model.size or w < model.size:
                raise InputError(f"{path}: image is {w}x{h}, smaller than the model input {model.size}x{model.size}")
            tiled = args.tile == "always" or (args.tile == "auto" and max(h, w) > 2 * model.size)
            if tiled:
                runner.tiled(path, reader)
            else:
                small.append((path, reader.read_region(0, 0, h, w)))
        except InputError as err:
            runner.rows.append({"input": str(path), "status": "error", "error": str(err)})
        except Exception as err:  # a decoder failing on one file must not stop the others
            runner.rows.append({"input": str(path), "status": "error", "error": f"{path}: {type(err).__name__}: {err}"})
        finally:
            if reader is not None:
                reader.close()
        if len(small) >= args.batch_size:
            runner.whole_images(small)
            small = []
    runner.whole_images(small)
    rows = sorted(runner.rows, key=lambda r: r["input"])
    if args.format == "json":
        write_text_atomic(out, json.dumps({"bundle": str(bundle), "model": model.artifact, "results": rows}, indent=2))
    else:
        first = ["input", "status", "error", "prediction"] + [f"prob_{c}" for c in model.labels]
        write_text_atomic(out, _csv(rows, first))
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"{len(rows) - len(failed)} input(s) done, {len(failed)} failed; results in {out}", file=sys.stderr)
    for r in failed:
        print(f"  failed: {r['error']}", file=sys.stderr)
    return EXIT_INPUT_FAILURES if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pathnas-infer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="a bundle folder written by `pathnas-edge package`")
    p.add_argument("inputs", nargs="+", help="image files, slides or folders of them")
    p.add_argument("--out", required=True, help="results file (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], default=None, help="default: from --out's extension")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino"], default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", choices=["auto", "always", "never"], default="auto",
                   help="auto: tile images larger than twice the model input")
    p.add_argument("--tile-overlap", type=float, default=0.25)
    p.add_argument("--min-tissue", type=float, default=0.2, help="skip tiles with less tissue than this share")
    p.add_argument("--heatmap-size", type=int, default=512)
    p.add_argument("--mask-dir", default=None, help="segmentation masks (default: beside --out)")
    p.add_argument("--tile-dir", default=None, help="per-tile CSVs and heatmaps (default: beside --out)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.format is None:
        args.format = "json" if str(args.out).endswith(".json") else "csv"
    if args.batch_size < 1 or not 0 <= args.tile_overlap < 1:
        print("error: --batch-size must be >= 1 and --tile-overlap in [0, 1)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
