"""Data sets as a run reads them, an image folder (folders.py) or a pack of one (shards.py): the task,
classes, splits and fingerprint of either, transforms and loaders.

Unreadable files stop the run unless ``skip_bad``; those skipped are listed in splits.json.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..deploy.images import IMAGE_EXTENSIONS  # the runtime reads the same kinds of image files
from ..errors import ConfigError
from . import folders
from .folders import (MARKER_FILE, NORMALIZE_MEAN, NORMALIZE_STD, SKIP_HINT, SPLITS, SPLITS_FILE, DataError, image_size,
                      load_problem, open_mask, open_rgb, pair_segmentation, read_marker)
from .seeding import EpochShuffle, derive_seed, generator
from .shards import BatchAugment, PackSplit, collate_batch, is_pack, open_pack


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
            bad = next(((p, f"cannot read the file ({why})") for p in entry if (why := load_problem(p))), None)
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
        image = tv_tensors.Image(v2.functional.pil_to_tensor(open_rgb(path)))
        return self._transform(i, image), label


class SegmentationFolder(_FolderDataset):
    """``ROOT/images/*`` with ``ROOT/masks/*`` of one split; items are (image tensor, mask LongTensor HxW)."""

    def __init__(self, root, split: str, transform=None, skip_bad: bool = False, num_classes: int = 2):
        root = Path(root)
        self.num_classes = num_classes
        pairs = pair_segmentation(root)
        splits = load_or_create_splits(root, "segment")
        super().__init__(root, split, transform, skip_bad, [pairs[Path(rel).stem] for rel in splits[split]], splits)
        self.samples: list[tuple[Path, Path]] = list(self._readable)  # (image, mask)

    def _entry_problem(self, entry: tuple[Path, ...]) -> tuple[Path, str] | None:
        image_path, mask_path = entry
        (iw, ih), (mw, mh) = image_size(image_path), image_size(mask_path)
        if (iw, ih) != (mw, mh):
            return mask_path, f"the mask is {mw}x{mh} pixels, its image {image_path.name} is {iw}x{ih}"
        return None

    def __getitem__(self, i: int):
        image_path, mask_path = self.samples[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(open_rgb(image_path)))
        mask = tv_tensors.Mask(torch.from_numpy(open_mask(mask_path, self.num_classes)))
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
        folders.record_skipped(root, skipped)
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
    return open_pack(root) if is_pack(root) else None


# What a run asks of its data, an image folder's or its pack's.
def detect_task(root: str | os.PathLike) -> str:
    """``"segment"`` for images/ + masks/ folders, ``"classify"`` for class subfolders of images (or a pack of either)."""
    pack = _packed(Path(root))
    return pack.task if pack else folders.detect_task(root)


def list_classes(root: str | os.PathLike, required: bool = True) -> list[str]:
    """Class names of a classification data set (folders.list_classes for an image folder)."""
    pack = _packed(Path(root))
    return pack.classes if pack else folders.list_classes(root, required)


def segmentation_classes(root: Path) -> list[str]:
    """Class names of a segmentation data set (folders.segmentation_classes for an image folder)."""
    pack = _packed(Path(root))
    return pack.classes if pack else folders.segmentation_classes(root)


def load_or_create_splits(root: str | os.PathLike, task: str | None = None, seed: int = 0,
                          fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict:
    """Train/val/test relative paths (folders.load_or_create_splits); a pack's are its image folder's, saved in it."""
    pack = _packed(Path(root))
    return pack.splits if pack else folders.load_or_create_splits(root, task, seed, fractions)


def data_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 of what a run trains on (folders.data_fingerprint; a pack's own)."""
    pack = _packed(Path(root))
    return pack.fingerprint() if pack else folders.data_fingerprint(root)


def _pack_loaders(pack, input_size: int, batch_size: int, seed: int, workers: int, distributed: bool,
                  drop_last_train: bool) -> DataBundle:
    """build_loaders for a pack: the same splits, order and loaders; training batches stay uint8 and are
    augmented on the training device (``device_transform``, applied by pathnas.train's loop)."""
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
    summary = read_marker(root)
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
