"""Image-folder data sets as files: their layouts, classes and splits (drawn once, saved beside the data),
and reading their images and masks. Packs (shards.py) are made from these; datasets.py serves either.

Layouts:
- classification: ``ROOT/<class>/*.png|jpg|tif...`` (BreakHis / Kather)
- segmentation: ``ROOT/images/<stem>.*`` with ``ROOT/masks/<stem>.*`` (integer label images)

Every problem with the data is a DataError whose message starts with the file or folder at fault.
What is not used is said, once, in a warning: a class folder without images, a folder inside a
class folder (a class is one folder of images), a symlink that leads nowhere.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..deploy.images import IMAGE_EXTENSIONS  # the runtime reads the same kinds of image files
from ..errors import ConfigError, UserError
from ..io import write_json_atomic

# The models start from ImageNet-style stems; exported preprocessing files repeat these numbers.
NORMALIZE_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
NORMALIZE_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"
MARKER_FILE = "dataset.json"
SKIP_HINT = "--skip-bad skips such files"
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")

log = logging.getLogger("pathnas.data")
_reported: set[str] = set()


class DataError(UserError):
    """A data set problem; the message names the file or folder at fault."""


def _report(message: str) -> None:
    """A warning about data that is not used, said once per process (the folders are listed often)."""
    if message not in _reported:
        _reported.add(message)
        log.warning("%s", message)


def images_in(folder: Path, report: bool = True) -> list[Path]:
    """Image files of a folder, sorted; hidden files and files that are not images ignored.

    A symlink to an image is followed; a broken one is kept, so that the file check names it
    (an error, or skipped with --skip-bad) instead of losing it without a word. Folders inside
    are reported: their images are not part of this folder.
    """
    images = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if report:
                nested = sum(1 for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
                _report(f"{p}: a folder inside {folder.name}/ with {nested} image(s), not used (an image folder "
                        f"holds its images directly; move them up, or make it a class folder of its own)")
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink()):
            images.append(p)
    return sorted(images)


def read_marker(root: Path) -> dict:
    """The generator's dataset.json, or {} for a data set that has none (any real one)."""
    marker = root / MARKER_FILE
    if not marker.exists():
        return {}
    try:
        summary = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{marker}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise DataError(f"{marker}: expected a JSON object")
    return summary


def detect_task(root: str | os.PathLike) -> str:
    """``"segment"`` for images/ + masks/ folders, ``"classify"`` for class subfolders of images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "segment"
    if list_classes(root, required=False):
        return "classify"
    raise DataError(
        f"{root}: no data set found; expected class subfolders of images, ROOT/<class>/*.png (classification), "
        f"or ROOT/images/ and ROOT/masks/ folders paired by file name (segmentation)"
    )


def list_classes(root: str | os.PathLike, required: bool = True) -> list[str]:
    """Class names of a classification folder: its subfolders that hold images, sorted.

    A subfolder without images is not a class; it is reported (a class that lost its images
    would otherwise vanish, and with it an output of the model).
    """
    root = Path(root)
    classes = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if images_in(d, report=required):
            classes.append(d.name)
        elif required:
            _report(f"{d}: a folder without images, not a class")
    if required and not classes:
        raise DataError(f"{root}: no class subfolders with images")
    return classes


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in images_in(folder):
        if path.stem in files:  # a.png and a.tif: which one pairs with the mask is a guess
            raise DataError(f"{path}: same file name as {files[path.stem].name}; images and masks pair by name")
        files[path.stem] = path
    return files


def pair_segmentation(root: Path) -> dict[str, tuple[Path, Path]]:
    """(image, mask) by file stem; an image without a mask or a mask without an image is an error."""
    images, masks = _by_stem(root / "images"), _by_stem(root / "masks")
    for stem in sorted(set(images) ^ set(masks)):
        if stem in images:
            raise DataError(f"{images[stem]}: no matching mask with the same file name in {root / 'masks'}")
        raise DataError(f"{masks[stem]}: no matching image with the same file name in {root / 'images'}")
    if not images:
        raise DataError(f"{root / 'images'}: no images")
    return {stem: (images[stem], masks[stem]) for stem in sorted(images)}


def _all_samples(root: Path, task: str) -> dict[str, list[str]]:
    """Relative image paths (POSIX, so splits.json travels between systems) grouped by class;
    segmentation has one group."""
    if task == "classify":
        return {c: [p.relative_to(root).as_posix() for p in images_in(root / c)] for c in list_classes(root)}
    return {"all": [image.relative_to(root).as_posix() for image, _ in pair_segmentation(root).values()]}


def load_or_create_splits(
    root: str | os.PathLike, task: str | None = None, seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict:
    """Train/val/test relative paths, drawn once (stratified by class) and saved as ROOT/splits.json.

    Later calls reuse the saved file whatever their seed or fractions: every stage (and every rank of a
    distributed run) must see the same split, so the first draw wins. Delete the file to draw again.
    Returns ``{"train": [...], "val": [...], "test": [...], "seed", "fractions", "task"}``.
    """
    root = Path(root)
    task = task or detect_task(root)
    path = root / SPLITS_FILE
    if path.exists():
        return _load_splits(root, path, task)
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ConfigError(f"split fractions {fractions} must be three positive numbers that sum to 1")
    rng = random.Random(seed)
    splits: dict = {s: [] for s in SPLITS}
    for group, files in _all_samples(root, task).items():
        n = len(files)
        if n < 3:
            where = root / group if task == "classify" else root / "images"
            raise DataError(f"{where}: {n} image(s); at least 3 are needed to give train, val and test one each")
        files = sorted(files)
        rng.shuffle(files)
        # At least one each, and never so many for val/test that train goes empty.
        n_val = min(max(1, round(fractions[1] * n)), n - 2)
        n_test = min(max(1, round(fractions[2] * n)), n - 1 - n_val)
        splits["val"] += files[:n_val]
        splits["test"] += files[n_val:n_val + n_test]
        splits["train"] += files[n_val + n_test:]
    splits.update(seed=seed, fractions=list(fractions), task=task)
    write_json_atomic(path, splits)
    return splits


def _load_splits(root: Path, path: Path, task: str) -> dict:
    try:
        splits = json.loads(path.read_text())
        names = [p for s in SPLITS for p in splits[s]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid splits file ({err}); delete it to draw the splits again") from None
    if splits.get("task", task) != task:
        raise DataError(f"{path}: drawn for a {splits['task']} data set, this is a {task} one; delete it")
    for rel in names:
        if not os.path.lexists(root / rel):
            raise DataError(f"{root / rel}: listed in {path} but missing; restore it or delete {path}")
    return splits


def data_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 of what a run trains on: the saved splits (with the files skipped), the classes and the
    size of every file. A checkpoint records it, so a resume on another data set is refused, while the
    folder itself may move (sizes, unlike times, survive a copy)."""
    import hashlib

    root = Path(root)
    task = detect_task(root)
    splits = load_or_create_splits(root, task)
    classes = list_classes(root) if task == "classify" else segmentation_classes(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (SPLITS_FILE, MARKER_FILE)
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    identity = {s: splits[s] for s in SPLITS} | {
        "skipped": splits.get("skipped", []), "classes": classes,
        "sizes": [[p.relative_to(root).as_posix(), p.stat().st_size] for p in files]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def record_skipped(root: str | os.PathLike, skipped: list[Path]) -> None:
    """List the files ``skip_bad`` left out in ROOT/splits.json (``"skipped"``), so the record of what a
    model was trained on stays beside the data. Rewritten only when the list changes."""
    root = Path(root)
    path = root / SPLITS_FILE
    splits = json.loads(path.read_text())
    names = sorted(p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in skipped)
    if splits.get("skipped", []) != names:
        splits["skipped"] = names
        write_json_atomic(path, splits)


def load_problem(path: Path) -> str | None:
    """Why an image cannot be read, or None. verify() checks the structure (CRCs) without decoding;
    load() then decodes, which is what catches a truncated body, notably in JPEGs."""
    if path.is_symlink() and not path.exists():
        return f"a symlink to {os.readlink(path)}, which does not exist"
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()
        return None
    except Exception as err:  # PIL raises many types for a damaged file
        return f"{type(err).__name__}: {err}"


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # the header only
        return img.size


def open_rgb(path: Path) -> Image.Image:
    """Any readable image as 8-bit RGB (grayscale, palette, RGBA and 16-bit included)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _SIXTEEN_BIT_MODES:
                # Scaled by the image's own maximum: 12-bit data in 16-bit files would be near black
                # if divided by 257, and convert("RGB") would clip it to 255.
                arr = np.asarray(img, dtype=np.float32)
                img = Image.fromarray((arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8))
            return img.convert("RGB")
    except Exception as err:  # PIL raises many types for a damaged file
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err}); {SKIP_HINT}") from None


def open_mask(path: Path, num_classes: int) -> np.ndarray:
    """An integer label image as int64 HxW; 0/255 binary masks become 0/1."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise DataError(f"{path}: a colour mask; save class indices as a single-channel (L or P) image")
                mask = rgb[..., 0]
            elif img.mode == "LA":
                mask = np.asarray(img.getchannel(0))
            else:  # 1, L, P (palette indices are the labels), 16-bit
                mask = np.asarray(img)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: cannot read mask ({type(err).__name__}: {err}); {SKIP_HINT}") from None
    if mask.dtype.kind not in "biu":
        raise DataError(f"{path}: mask pixels are {mask.dtype}, not integer class indices")
    values = np.unique(mask)
    if values.max() >= num_classes and set(values.tolist()) <= {0, 255}:
        mask = mask > 0  # binary masks are often saved as 0/255
    elif values.max() >= num_classes:
        raise DataError(f"{path}: mask value {int(values.max())} is not a class index (0..{num_classes - 1})")
    return mask.astype(np.int64)


def segmentation_classes(root: Path) -> list[str]:
    """Class names of a segmentation data set: from its dataset.json if it has one, else binary."""
    summary = read_marker(Path(root))
    if summary.get("task") == "segment" and summary.get("classes"):
        return list(summary["classes"])
    return ["background", "nucleus"]
