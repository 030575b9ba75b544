"""Packed data sets: every image decoded once, resized to a square tile and stored in memory-mapped
uint8 arrays (numpy's .npy format, read with ``np.load(mmap_mode="r")``), so an epoch reads pixels
instead of decoding PNGs.

Chosen by measurement (``benchmarks/loader_throughput.py``): a batch is one slice of the array, with
no decoding at all, while a tar shard of JPEG tiles (WebDataset) still decodes every image on every
epoch, several times the cost of the read. The price is disk: 147 KiB per 224 px tile (ImageNet's 1.3
million images: 197 GB), against about 10-20 KiB as JPEG.

A pack folder holds:
- ``images.npy``: N x 3 x S x S uint8 (channels first, so a batch needs no transpose);
- ``labels.npy`` (N int64, classification) or ``masks.npy`` (N x S x S uint8, segmentation);
- ``pack.json``, written last (its presence means the pack is complete): the task, the classes, the tile
  size, the source's file of every row, the source's splits (the same train / val / test as the image
  folder, and the files skipped as unusable), the SHA-256 of every source file and of every array;
- ``progress.json`` while it is being written: ``pack`` resumes from the last row recorded there.

``pack`` run again on a finished pack verifies it: the arrays against their hashes and the source
files against theirs. Augmentation of packed training batches happens on the training device,
batch by batch (``BatchAugment``), not per image in loader workers.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import ConfigError
from ..io import sha256_file, sweep_temporaries, write_json_atomic
from ..lock import RunLock
from .folders import (MARKER_FILE, NORMALIZE_MEAN, NORMALIZE_STD, SKIP_HINT, SPLITS, DataError, detect_task, image_size,
                      list_classes, load_or_create_splits, load_problem, open_mask, open_rgb, pair_segmentation,
                      record_skipped, segmentation_classes)
from .seeding import generator

PACK_FORMAT = "pathnas-pack/1"
PACK_INDEX = "pack.json"
PACK_PROGRESS = "progress.json"
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
MASKS_FILE = "masks.npy"
_CHUNK = 256  # rows between two progress records: what a killed pack redoes at most


def is_pack(root: str | os.PathLike) -> bool:
    """A folder written by ``pack`` (finished or not)."""
    root = Path(root)
    return (root / PACK_INDEX).is_file() or (root / PACK_PROGRESS).is_file()


@dataclass(frozen=True)
class Pack:
    """A finished pack, as its pack.json describes it."""

    root: Path
    index: dict

    @property
    def task(self) -> str:
        return self.index["task"]

    @property
    def classes(self) -> list[str]:
        return list(self.index["classes"])

    @property
    def size(self) -> int:
        return int(self.index["size"])

    @property
    def splits(self) -> dict:
        """The source's splits, as load_or_create_splits returns them (relative names, skipped ones listed)."""
        return self.index["splits"]

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of a split's usable images, in the split's order."""
        if split not in SPLITS:
            raise ConfigError(f"split {split!r}: allowed values are {', '.join(SPLITS)}")
        row = {name: i for i, name in enumerate(self.index["files"])}
        skipped = set(self.splits.get("skipped", []))
        return np.array([row[name] for name in self.splits[split] if name not in skipped], dtype=np.int64)

    def array(self, name: str) -> np.ndarray:
        return np.load(self.root / name, mmap_mode="r")

    def fingerprint(self) -> str:
        """What a run trains on: the arrays' content (their hashes), the splits and the classes."""
        identity = {k: self.index[k] for k in ("sha256", "splits", "classes", "size", "task")}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def open_pack(root: str | os.PathLike) -> Pack:
    """A finished pack, its arrays checked against pack.json (shape and type; ``pack`` again checks content)."""
    root = Path(root)
    index_path = root / PACK_INDEX
    if not index_path.is_file():
        if (root / PACK_PROGRESS).is_file():
            raise DataError(f"{root}: a pack that was not finished; run `pathnas-edge data pack` again to finish it")
        raise DataError(f"{root}: not a pack ({PACK_INDEX} is missing)")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{index_path}: not valid JSON ({err}); pack the data set again") from None
    if not isinstance(index, dict) or index.get("format") != PACK_FORMAT:
        raise DataError(f"{index_path}: not a pack of this version (expected format {PACK_FORMAT})")
    pack = Pack(root, index)
    n, size = len(index["files"]), pack.size
    target = (LABELS_FILE, (n,)) if pack.task == "classify" else (MASKS_FILE, (n, size, size))
    for name, shape in ((IMAGES_FILE, (n, 3, size, size)), target):
        try:
            array = pack.array(name)
        except (OSError, ValueError) as err:
            raise DataError(f"{root / name}: cannot be read ({err}); pack the data set again") from None
        if array.shape != shape:
            raise DataError(f"{root / name}: holds {array.shape}, {PACK_INDEX} says {shape}; pack the data set again")
    return pack


# -- writing --------------------------------------------------------------------------------------

def _rows(source: Path, task: str, splits: dict) -> list[tuple[str, Path, Path | None]]:
    """(relative name, image, mask) of every file of every split, in split order."""
    pairs = pair_segmentation(source) if task == "segment" else {}
    rows = []
    for split in SPLITS:
        for rel in splits[split]:
            mask = pairs[Path(rel).stem][1] if task == "segment" else None
            rows.append((rel, source / rel, mask))
    return rows


def _problem(image: Path, mask: Path | None) -> tuple[Path, str] | None:
    """What a folder data set would refuse in this entry (see datasets._FolderDataset): the file and why."""
    for path in (image, mask):
        if path is not None and (why := load_problem(path)):
            return path, f"cannot read the file ({why})"
    if mask is not None and image_size(image) != image_size(mask):
        (iw, ih), (mw, mh) = image_size(image), image_size(mask)
        return mask, f"the mask is {mw}x{mh} pixels, its image {image.name} is {iw}x{ih}"
    return None


def pack_bytes(source: str | os.PathLike, size: int, seed: int = 0) -> int:
    """The bytes the arrays of a pack of ``source`` at ``size`` px take (what to check the free disk against)."""
    source = Path(source)
    task = detect_task(source)
    splits = load_or_create_splits(source, task, seed=seed)
    rows = sum(len(splits[s]) for s in SPLITS)
    return rows * (3 * size * size + (size * size if task == "segment" else 8))


def pack(source: str | os.PathLike, out: str | os.PathLike, size: int = 224, seed: int = 0, skip_bad: bool = False,
         advance: Callable[[int, int], None] | None = None) -> dict:
    """Pack the image folder ``source`` into ``out``; resumes a pack a kill interrupted, verifies a finished one.

    The splits are the source's (drawn with ``seed`` and saved in its splits.json if it has none yet).
    ``advance(done, total)`` is called as rows are written (a progress bar). Returns pack.json's summary.
    """
    source, out = Path(source), Path(out)
    if is_pack(source):
        raise ConfigError(f"{source}: already a pack; pack the image folder it was made from")
    if size < 8:
        raise ConfigError(f"--size {size}: a tile must be at least 8 pixels")
    task = detect_task(source)
    splits = load_or_create_splits(source, task, seed=seed)
    classes = list_classes(source) if task == "classify" else segmentation_classes(source)
    if task == "segment" and len(classes) > 256:
        raise DataError(f"{source}: {len(classes)} classes; a pack stores masks as uint8 (at most 256)")
    rows = _rows(source, task, splits)
    header = {"format": PACK_FORMAT, "task": task, "classes": classes, "size": size,
              "files": [rel for rel, _, _ in rows]}
    if out.exists() and not is_pack(out) and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ConfigError(f"{out}: a folder that holds other files, not a pack; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "data pack"):  # one writer; a second pack into the same folder refuses
        sweep_temporaries(out)
        if (out / PACK_INDEX).is_file():
            return verify_pack(source, out, header)
        return _write(source, out, header, rows, splits, skip_bad, advance)


def _write(source: Path, out: Path, header: dict, rows: list, splits: dict, skip_bad: bool,
           advance: Callable[[int, int], None] | None) -> dict:
    task, classes, size = header["task"], header["classes"], header["size"]
    n = len(rows)
    state = {"header": header, "done": 0, "skipped": [], "source_sha256": []}
    progress_path = out / PACK_PROGRESS
    if progress_path.is_file():
        try:
            state = json.loads(progress_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{progress_path}: not valid JSON ({err}); delete {out} to pack afresh") from None
        if not isinstance(state, dict) or state.get("header") != header:
            saved = state.get("header") if isinstance(state, dict) and isinstance(state.get("header"), dict) else {}
            changed = sorted(k for k in header if saved.get(k) != header[k])
            raise ConfigError(f"{out}: a pack begun with other settings or files ({', '.join(changed)} changed); "
                              f"delete {out} to pack afresh, or choose another --out")
    else:
        write_json_atomic(progress_path, state)  # marks the folder as a pack being written before any array
    mode = "r+" if state["done"] else "w+"
    images = np.lib.format.open_memmap(out / IMAGES_FILE, mode=mode, dtype=np.uint8, shape=(n, 3, size, size))
    target = (np.lib.format.open_memmap(out / LABELS_FILE, mode=mode, dtype=np.int64, shape=(n,)) if task == "classify"
              else np.lib.format.open_memmap(out / MASKS_FILE, mode=mode, dtype=np.uint8, shape=(n, size, size)))
    label_of = {c: i for i, c in enumerate(classes)}
    resize = v2.Resize((size, size), antialias=True)  # the folder path's resize (masks: nearest neighbour)
    known_bad = set(splits.get("skipped", []))
    for i in range(state["done"], n):
        rel, image_path, mask_path = rows[i]
        bad = _problem(image_path, mask_path)
        state["source_sha256"].append(None if bad else sha256_file(image_path))
        if bad is not None:
            if not (skip_bad or rel in known_bad):
                raise DataError(f"{bad[0]}: {bad[1]}; {SKIP_HINT}")
            state["skipped"].append(rel)
        else:
            image = tv_tensors.Image(v2.functional.pil_to_tensor(open_rgb(image_path)))
            if task == "classify":
                images[i] = resize(image).numpy()
                target[i] = label_of[Path(rel).parent.name]
            else:
                mask = tv_tensors.Mask(torch.from_numpy(open_mask(mask_path, len(classes))))
                image, mask = resize(image, mask)
                images[i], target[i] = image.numpy(), mask.numpy().astype(np.uint8)
        if (i + 1) % _CHUNK == 0 or i + 1 == n:
            images.flush()
            target.flush()
            state["done"] = i + 1
            write_json_atomic(progress_path, state)  # after the rows it counts are on disk
        if advance:
            advance(i + 1, n)
    del images, target  # close the maps before hashing
    skipped = sorted(set(state["skipped"]) | known_bad)
    if skip_bad and skipped:
        record_skipped(source, [source / rel for rel in skipped])  # as a folder run with --skip-bad would
    arrays = [IMAGES_FILE, LABELS_FILE if task == "classify" else MASKS_FILE]
    index = {**header, "source": str(source), "splits": {**{s: splits[s] for s in SPLITS}, "skipped": skipped,
                                                         "seed": splits.get("seed"), "task": task},
             "source_sha256": state["source_sha256"], "sha256": {a: sha256_file(out / a) for a in arrays}}
    if (source / MARKER_FILE).is_file():  # the data set's own description (mpp, classes) travels with it
        write_json_atomic(out / MARKER_FILE, json.loads((source / MARKER_FILE).read_text()))
    write_json_atomic(out / PACK_INDEX, index)  # the commit point: from now on the pack is complete
    progress_path.unlink()
    return _summary(index, verified=False)


def verify_pack(source: Path, out: Path, header: dict) -> dict:
    """A finished pack checked by content: its arrays against their hashes, the source files against theirs."""
    p = open_pack(out)
    changed = sorted(k for k in header if p.index.get(k) != header[k])
    if changed:
        raise ConfigError(f"{out}: packed from other files or with other settings ({', '.join(changed)} not as now); "
                          f"delete {out} to pack afresh, or choose another --out")
    for name, digest in p.index["sha256"].items():
        if sha256_file(out / name) != digest:
            raise DataError(f"{out / name}: its content does not match the hash in {PACK_INDEX} (damaged or "
                            f"changed); delete {out} and pack again")
    for rel, digest in zip(p.index["files"], p.index["source_sha256"]):
        if digest is not None and sha256_file(source / rel) != digest:
            raise DataError(f"{source / rel}: changed since it was packed into {out}; delete {out} and pack again")
    return _summary(p.index, verified=True)


def _summary(index: dict, verified: bool) -> dict:
    splits = index["splits"]
    skipped = set(splits["skipped"])
    return {"task": index["task"], "classes": index["classes"], "size": index["size"], "verified": verified,
            "split_sizes": {s: sum(1 for r in splits[s] if r not in skipped) for s in SPLITS},
            "skipped": len(skipped)}


# -- reading --------------------------------------------------------------------------------------

class PackSplit(Dataset):
    """One split of a pack. Items are (uint8 3xSxS image, label or uint8 mask); a batch of indices is read
    with one slice of the memory map (``__getitems__``), sorted so the read moves forward on disk.

    With ``normalize`` (val, test, calibration) the images come out as the folder path's eval transform
    gives them: resized to ``input_size``, float, normalised. The training split stays uint8 and carries a
    ``device_transform`` that augments and normalises whole batches on the training device.
    """

    def __init__(self, pack: Pack, split: str, input_size: int, normalize: bool):
        self.pack, self.split, self.input_size, self.normalize = pack, split, input_size, normalize
        self.index = pack.rows(split)
        self.task = pack.task
        self.targets = ([int(t) for t in pack.array(LABELS_FILE)[np.sort(self.index)]]
                        if pack.task == "classify" else None)
        self.device_transform: BatchAugment | None = None
        self._images = self._target = None  # opened in the process that reads (each loader worker its own)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        if self._images is None:
            self._images = self.pack.array(IMAGES_FILE)
            self._target = self.pack.array(LABELS_FILE if self.task == "classify" else MASKS_FILE)
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        sorted_rows = rows[order]
        x = torch.from_numpy(np.ascontiguousarray(self._images[sorted_rows][back]))
        y = torch.from_numpy(np.ascontiguousarray(self._target[sorted_rows][back]).astype(np.int64))
        if self.normalize:
            x, y = to_model_input(x, y, self.input_size)
        return x, y


def collate_batch(batch):
    """``PackSplit.__getitems__`` already returns a stacked batch."""
    return batch


def to_model_input(x: torch.Tensor, y: torch.Tensor, input_size: int,
                   normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x S x S (and masks) -> resized to ``input_size``, float in [0, 1], normalised like the
    folder path (unless ``normalize`` is False)."""
    if x.shape[-1] != input_size:
        x = v2.functional.resize(x, [input_size, input_size], antialias=True)
        if y.dim() == 3:
            y = v2.functional.resize(y[:, None], [input_size, input_size],
                                     interpolation=v2.InterpolationMode.NEAREST)[:, 0]
    x = v2.functional.to_dtype(x, torch.float32, scale=True)
    return (v2.functional.normalize(x, list(NORMALIZE_MEAN), list(NORMALIZE_STD)) if normalize else x), y


# RGB -> YIQ (luma and two chroma axes); the luma row is torchvision's grayscale weights, so scaling the
# chroma axes is exactly its saturation blend, and rotating them is a hue shift (as DALI's colour twist).
_YIQ = torch.tensor([[0.2989, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


class BatchAugment:
    """The folder path's training augmentation (flips, a multiple of 90 degrees, colour jitter
    brightness/contrast/saturation 0.1, hue 0.03) on a whole uint8 batch on the training device, each
    image with parameters of its own; then resize, float and normalisation. On a CPU it runs on the CPU.
    The colour jitter is one affine colour map per image (torchvision applies its four steps one by one,
    clamping after each, and shifts hue in HSV); the ranges are torchvision's.

    The parameters of step s of epoch e on rank r are drawn from a generator seeded by (seed, e, s, r):
    the same in every run with that seed, and in a resumed one, whatever the number of loader workers.
    """

    def __init__(self, seed: int, input_size: int, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, hue: float = 0.03):
        self.seed, self.input_size = seed, input_size
        self.ranges = (brightness, contrast, saturation)
        self.hue = hue

    def params(self, n: int, epoch: int, step: int, rank: int) -> dict[str, torch.Tensor]:
        g = generator(self.seed, "batch-augment", epoch, step, rank)
        return {"hflip": torch.rand(n, generator=g) < 0.5, "vflip": torch.rand(n, generator=g) < 0.5,
                "quarter_turns": torch.randint(4, (n,), generator=g),
                "jitter": 1 + (torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor(self.ranges),
                "hue": (torch.rand(n, generator=g) * 2 - 1) * self.hue}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int, rank: int = 0):
        p = {k: v.to(x.device) for k, v in self.params(x.shape[0], epoch, step, rank).items()}
        is_mask = y.dim() == 3
        x, y = self._geometric(x, p), (self._geometric(y[:, None], p)[:, 0] if is_mask else y)
        x, y = to_model_input(x, y, self.input_size, normalize=False)
        return v2.functional.normalize(self._colour(x, p), list(NORMALIZE_MEAN), list(NORMALIZE_STD)), y

    @staticmethod
    def _geometric(t: torch.Tensor, p: dict) -> torch.Tensor:
        """Flips and quarter turns: each image gets one of the 8 symmetries of the square, and each group of
        images sharing one is moved in one operation (tiles are square, so every turn keeps the shape)."""
        element = p["hflip"].long() * 8 + p["vflip"].long() * 4 + p["quarter_turns"]
        out = torch.empty_like(t)
        for e in torch.unique(element).tolist():
            chosen = (element == e).nonzero().flatten()
            part = t[chosen]
            dims = [d for d, on in ((-1, e & 8), (-2, e & 4)) if on]
            part = part.flip(dims) if dims else part
            out[chosen] = torch.rot90(part, e & 3, dims=(-2, -1)) if e & 3 else part
        return out

    @staticmethod
    def _colour(x: torch.Tensor, p: dict) -> torch.Tensor:
        """Brightness, contrast, saturation and hue of a float batch in [0, 1] as one affine map per image
        (a 3x3 matrix and an offset), applied in one pass and clamped once."""
        b, c, s = p["jitter"].double().unbind(dim=1)
        angle = p["hue"].double() * 2 * torch.pi
        n = x.shape[0]
        chroma = torch.zeros(n, 3, 3, dtype=torch.float64, device=x.device)
        chroma[:, 0, 0] = 1
        chroma[:, 1, 1], chroma[:, 1, 2] = s * angle.cos(), -s * angle.sin()
        chroma[:, 2, 1], chroma[:, 2, 2] = s * angle.sin(), s * angle.cos()
        yiq = _YIQ.to(x.device)
        matrix = (c * b)[:, None, None] * (torch.linalg.inv(yiq) @ chroma @ yiq)
        # Contrast blends with the mean grey level of the brightened image: b times the original's.
        grey = torch.einsum("c,nc->n", yiq[0], x.mean(dim=(-2, -1)).double())
        offset = ((1 - c) * b * grey)[:, None, None, None]
        out = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + offset.to(x.dtype)
        return out.clamp_(0, 1)
