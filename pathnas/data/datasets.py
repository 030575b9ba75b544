"""Image-folder data sets, splits drawn once and saved beside the data, transforms and loaders.

Layouts:
- classification: ``ROOT/<class>/*.png|jpg|tif...`` (BreakHis / Kather)
- segmentation: ``ROOT/images/<stem>.*`` with ``ROOT/masks/<stem>.*`` (integer label images)

Every problem with the data is a DataError whose message starts with the file or folder at fault.
What is not used is said, once, in a warning: a class folder without images, a folder inside a
class folder (a class is one folder of images), a symlink that leads nowhere. Unreadable files
stop the run unless ``skip_bad``; those skipped are listed in splits.json.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..deploy.images import IMAGE_EXTENSIONS  # the runtime reads the same kinds of image files
from ..errors import ConfigError, UserError
from ..io import write_json_atomic
from .seeding import EpochShuffle, derive_seed, generator

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


def _images_in(folder: Path, report: bool = True) -> list[Path]:
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


def _read_marker(root: Path) -> dict:
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
    if _packed(root):
        return _packed(root).task
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
    if _packed(root):
        return _packed(root).classes
    classes = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if _images_in(d, report=required):
            classes.append(d.name)
        elif required:
            _report(f"{d}: a folder without images, not a class")
    if required and not classes:
        raise DataError(f"{root}: no class subfolders with images")
    return classes


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in _images_in(folder):
        if path.stem in files:  # a.png and a.tif: which one pairs with the mask is a guess
            raise DataError(f"{path}: same file name as {files[path.stem].name}; images and masks pair by name")
        files[path.stem] = path
    return files


def _pair_segmentation(root: Path) -> dict[str, tuple[Path, Path]]:
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
        return {c: [p.relative_to(root).as_posix() for p in _images_in(root / c)] for c in list_classes(root)}
    return {"all": [image.relative_to(root).as_posix() for image, _ in _pair_segmentation(root).values()]}


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
    if _packed(root):
        return _packed(root).splits  # the image folder's, saved in the pack
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
    if _packed(root):
        return _packed(root).fingerprint()
    task = detect_task(root)
    splits = load_or_create_splits(root, task)
    classes = list_classes(root) if task == "classify" else segmentation_classes(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (SPLITS_FILE, MARKER_FILE)
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    identity = {s: splits[s] for s in SPLITS} | {
        "skipped": splits.get("skipped", []), "classes": classes,
        "sizes": [[p.relative_to(root).as_posix(), p.stat().st_size] for p in files]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _record_skipped(root: str | os.PathLike, skipped: list[Path]) -> None:
    """List the files ``skip_bad`` left out in ROOT/splits.json (``"skipped"``), so the record of what a
    model was trained on stays beside the data. Rewritten only when the list changes."""
    root = Path(root)
    path = root / SPLITS_FILE
    splits = json.loads(path.read_text())
    names = sorted(p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in skipped)
    if splits.get("skipped", []) != names:
        splits["skipped"] = names
        write_json_atomic(path, splits)


def _load_problem(path: Path) -> str | None:
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


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # the header only
        return img.size


def _open_rgb(path: Path) -> Image.Image:
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


def _open_mask(path: Path, num_classes: int) -> np.ndarray:
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


class _FolderDataset(Dataset):
    """Shared checks: the split name, and every file of the split usable (or skipped), checked here,
    when the data set is built, not in a loader worker in the middle of an epoch.

    Augmentation: with ``augment_seed`` set (the training split), image i of epoch e is transformed
    under a torch seed derived from (augment_seed, e, i), so its augmentation is the same in every run
    with that seed, whichever worker or rank loads it and whatever came before (a resumed run).
    """

    augment_seed: int | None = None
    epoch = 0

    def __init__(self, root, split: str, transform, skip_bad: bool, entries: list[tuple[Path, ...]],
                 splits: dict | None = None):
        if split not in SPLITS:
            raise ConfigError(f"split {split!r}: allowed values are {', '.join(SPLITS)}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.skipped: list[Path] = []
        self._readable: list[tuple[Path, ...]] = []
        # A file a --skip-bad run listed in splits.json is left out again while it stays unusable, so that
        # every stage reading the data set (export, validation...) sees the same files without the flag.
        known_bad = {self.root / rel for rel in (splits or {}).get("skipped", [])}
        for entry in entries:  # an entry is the image plus its mask, if any
            bad = next(((p, f"cannot read the file ({why})") for p in entry if (why := _load_problem(p))), None)
            bad = bad or self._entry_problem(entry)
            if bad is None:
                self._readable.append(entry)
            elif skip_bad or bad[0] in known_bad:
                self.skipped.append(bad[0])
            else:
                raise DataError(f"{bad[0]}: {bad[1]}; {SKIP_HINT}")
        if entries and not self._readable:
            raise DataError(f"{self.root / SPLITS_FILE}: none of the {len(entries)} files of the {split} split is readable")

    def _entry_problem(self, entry: tuple[Path, ...]) -> tuple[Path, str] | None:
        """A problem of the entry as a whole (its files are readable): the file at fault and why."""
        return None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _transform(self, i: int, *items):
        if self.transform is None:
            return items if len(items) > 1 else items[0]
        if self.augment_seed is None:
            return self.transform(*items)
        with torch.random.fork_rng(devices=[]):  # the global stream (dropout, ...) is left as it was
            torch.manual_seed(derive_seed(self.augment_seed, "augment", self.epoch, i))
            return self.transform(*items)

    def __len__(self) -> int:
        return len(self._readable)


class ImageClassificationFolder(_FolderDataset):
    """``ROOT/<class>/*`` images of one split; items are (image tensor, label)."""

    def __init__(self, root, split: str, transform=None, skip_bad: bool = False):
        root = Path(root)
        self.classes = list_classes(root)
        index = {c: i for i, c in enumerate(self.classes)}
        splits = load_or_create_splits(root, "classify")
        super().__init__(root, split, transform, skip_bad, [(root / rel,) for rel in splits[split]], splits)
        self.samples = [(path, index[path.parent.name]) for path, in self._readable]
        self.targets = [label for _, label in self.samples]

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(_open_rgb(path)))
        return self._transform(i, image), label


class SegmentationFolder(_FolderDataset):
    """``ROOT/images/*`` with ``ROOT/masks/*`` of one split; items are (image tensor, mask LongTensor HxW)."""

    def __init__(self, root, split: str, transform=None, skip_bad: bool = False, num_classes: int = 2):
        root = Path(root)
        self.num_classes = num_classes
        pairs = _pair_segmentation(root)
        splits = load_or_create_splits(root, "segment")
        super().__init__(root, split, transform, skip_bad, [pairs[Path(rel).stem] for rel in splits[split]], splits)
        self.samples: list[tuple[Path, Path]] = list(self._readable)  # (image, mask)

    def _entry_problem(self, entry: tuple[Path, ...]) -> tuple[Path, str] | None:
        image_path, mask_path = entry
        (iw, ih), (mw, mh) = _image_size(image_path), _image_size(mask_path)
        if (iw, ih) != (mw, mh):
            return mask_path, f"the mask is {mw}x{mh} pixels, its image {image_path.name} is {iw}x{ih}"
        return None

    def __getitem__(self, i: int):
        image_path, mask_path = self.samples[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(_open_rgb(image_path)))
        mask = tv_tensors.Mask(torch.from_numpy(_open_mask(mask_path, self.num_classes)))
        image, mask = self._transform(i, image, mask)
        return image, mask.as_subclass(torch.Tensor).long()


def build_transforms(task: str, input_size: int, train: bool) -> v2.Compose:
    """Joint image(+mask) transforms: call ``tf(image)`` or ``tf(image, mask)`` with tv_tensors.

    v2 applies the same random flip/rotation to both, resizes masks nearest-neighbour, and leaves
    masks out of the colour jitter, the dtype conversion and the normalisation, so they stay integer.
    """
    if task not in ("classify", "segment"):
        raise ConfigError(f"task {task!r}: allowed values are classify, segment")
    steps: list = [v2.Resize((input_size, input_size), antialias=True)]
    if train:
        steps += [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            # Tissue has no up: any multiple of 90 degrees (exact on the square, resized tile).
            v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.03),  # stain variation
        ]
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
    return v2.Compose(steps)


@dataclass
class DataBundle:
    """The loaders of one data set and what the models need to know about it."""

    task: str
    classes: list[str]
    num_classes: int
    train: DataLoader
    val: DataLoader
    test: DataLoader
    calib: DataLoader  # the TRAIN split with eval transforms: BN recalibration and INT8 calibration
    skipped: list[Path] = field(default_factory=list)  # unreadable files dropped with skip_bad


def segmentation_classes(root: Path) -> list[str]:
    """Class names of a segmentation data set: from its dataset.json if it has one, else binary."""
    if _packed(root):
        return _packed(root).classes
    summary = _read_marker(Path(root))
    if summary.get("task") == "segment" and summary.get("classes"):
        return list(summary["classes"])
    return ["background", "nucleus"]


def _dataset(root: Path, task: str, split: str, transform, skip_bad: bool, num_classes: int):
    if task == "classify":
        return ImageClassificationFolder(root, split, transform, skip_bad)
    return SegmentationFolder(root, split, transform, skip_bad, num_classes)


def build_loaders(
    root: str | os.PathLike, input_size: int, batch_size: int, seed: int = 0, workers: int = 0,
    skip_bad: bool = False, distributed: bool = False, drop_last_train: bool = True, record_skipped: bool = True,
) -> DataBundle:
    """Train (augmented, shuffled with ``seed``), val, test and calib loaders of ROOT.

    The training order and augmentation of epoch e are functions of (seed, e): call ``set_epoch``
    (pathnas.data) on the train loader before each epoch. With ``distributed`` the train loader
    uses a seeded DistributedSampler; val and test stay whole on every rank. The calib loader
    gives the same shuffled order every time. The splits are drawn with ``seed`` only the first
    time. Files ``skip_bad`` leaves out are listed in splits.json (unless ``record_skipped`` is False:
    the DDP ranks other than 0).
    """
    root = Path(root)
    if _packed(root):
        return _pack_loaders(_packed(root), input_size, batch_size, seed, workers, distributed, drop_last_train)
    task = detect_task(root)
    load_or_create_splits(root, task, seed=seed)
    classes = list_classes(root) if task == "classify" else segmentation_classes(root)
    n = len(classes)
    train_set = _dataset(root, task, "train", build_transforms(task, input_size, True), skip_bad, n)
    train_set.augment_seed = derive_seed(seed, "augment")
    eval_tf = build_transforms(task, input_size, False)
    val_set, test_set = (_dataset(root, task, s, eval_tf, skip_bad, n) for s in ("val", "test"))
    calib_set = copy.copy(train_set)  # the same (already verified) files, without augmentation
    calib_set.transform, calib_set.augment_seed = eval_tf, None
    skipped = train_set.skipped + val_set.skipped + test_set.skipped
    if skip_bad and record_skipped:
        _record_skipped(root, skipped)
    return DataBundle(task, classes, n, *_loaders(train_set, val_set, test_set, calib_set, batch_size, seed, workers,
                                                  distributed, drop_last_train), skipped=skipped)


def _loaders(train_set, val_set, test_set, calib_set, batch_size: int, seed: int, workers: int, distributed: bool,
             drop_last_train: bool, **loader_options) -> tuple[DataLoader, DataLoader, DataLoader, DataLoader]:
    """The train, val, test and calib loaders of four data sets (image folders or a pack's splits)."""
    sampler = (DistributedSampler(train_set, shuffle=True, seed=derive_seed(seed, "order") % 2**31,
                                  drop_last=drop_last_train) if distributed else EpochShuffle(len(train_set), seed))
    # Dropping the last partial batch avoids a tiny BatchNorm batch, but never at the cost of every batch.
    drop_last = drop_last_train and len(sampler) >= batch_size
    # Every loader has its own generator (it draws the workers' base seed), so that iterating one never
    # moves the global stream that dropout and mixup draw from. Training workers are not persistent:
    # each epoch starts them afresh, so nothing carries over from one epoch to the next.
    common = dict(batch_size=batch_size, num_workers=workers, **loader_options)
    train = DataLoader(train_set, sampler=sampler, generator=generator(seed, "train-workers"), drop_last=drop_last,
                       **common)
    calib = DataLoader(calib_set, sampler=EpochShuffle(len(calib_set), seed, "calibration"),
                       generator=generator(seed, "calib-workers"), persistent_workers=workers > 0, **common)
    val, test = (DataLoader(ds, generator=generator(seed, f"{ds.split}-workers"), persistent_workers=workers > 0,
                            **common) for ds in (val_set, test_set))
    return train, val, test, calib


def _packed(root: Path):
    """The pack at ``root`` (pathnas.data.shards), or None for an image folder."""
    from .shards import is_pack, open_pack

    return open_pack(root) if is_pack(root) else None


def _pack_loaders(pack, input_size: int, batch_size: int, seed: int, workers: int, distributed: bool,
                  drop_last_train: bool) -> DataBundle:
    """build_loaders for a pack: the same splits, order and loaders; training batches stay uint8 and are
    augmented on the training device (``device_transform``, applied by pathnas.train's loop)."""
    from .shards import BatchAugment, PackSplit, collate_batch

    train_set = PackSplit(pack, "train", input_size, normalize=False)
    train_set.device_transform = BatchAugment(derive_seed(seed, "augment"), input_size)
    val_set, test_set, calib_set = (PackSplit(pack, s, input_size, normalize=True) for s in ("val", "test", "train"))
    loaders = _loaders(train_set, val_set, test_set, calib_set, batch_size, seed, workers, distributed,
                       drop_last_train, collate_fn=collate_batch)
    skipped = [pack.root / rel for rel in pack.splits.get("skipped", [])]
    return DataBundle(pack.task, pack.classes, len(pack.classes), *loaders, skipped=skipped)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Move a training loader to epoch ``epoch``: its order and its augmentation (see build_loaders)."""
    for part in (loader.sampler, loader.dataset):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def dataset_summary(root: str | os.PathLike) -> dict:
    """What a model card needs to say about the data: its own description (dataset.json) and split sizes."""
    root = Path(root)
    summary = _read_marker(root)
    splits = load_or_create_splits(root)
    summary.update(root=str(root), task=detect_task(root), split_sizes={s: len(splits[s]) for s in SPLITS})
    # The images' resolution in microns per pixel, as the data set declares it in dataset.json ("mpp");
    # None when it does not. The runtime reads slides at this resolution (preprocess.json records it).
    mpp = summary.get("mpp")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0 < mpp < 1000):
        raise DataError(f"{root / MARKER_FILE}: mpp {mpp!r} must be a positive number of microns per pixel")
    summary["mpp"] = mpp
    return summary


__all__ = [
    "IMAGE_EXTENSIONS", "NORMALIZE_MEAN", "NORMALIZE_STD", "DataBundle", "DataError", "ImageClassificationFolder",
    "SegmentationFolder", "build_loaders", "build_transforms", "dataset_summary", "detect_task", "list_classes",
    "load_or_create_splits", "segmentation_classes", "set_epoch", "data_fingerprint",
]
