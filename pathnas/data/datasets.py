"""Image-folder data sets, splits drawn once and saved beside the data, transforms and loaders.

Layouts:
- classification: ``ROOT/<class>/*.png|jpg|tif...`` (BreakHis / Kather)
- segmentation: ``ROOT/images/<stem>.*`` with ``ROOT/masks/<stem>.*`` (label images)
"""
from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..io import write_json_atomic

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
NORMALIZE_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
NORMALIZE_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"


class DataError(Exception):
    """A data set problem; the message names the file or folder at fault."""


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def detect_task(root: str | os.PathLike) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "segment"
    if list_classes(root, required=False):
        return "classify"
    raise DataError(
        f"{root}: no data set found; expected class subfolders of images (classification) "
        f"or images/ and masks/ folders paired by file name (segmentation)"
    )


def list_classes(root: str | os.PathLike, required: bool = True) -> list[str]:
    """Class names of a classification folder: its subfolders that hold images, sorted."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and _images_in(d))
    if required and not classes:
        raise DataError(f"{root}: no class subfolders with images")
    return classes


def _all_samples(root: Path, task: str) -> dict[str, list[str]]:
    """Relative image paths grouped by class (segmentation: one group)."""
    if task == "classify":
        return {c: [str(p.relative_to(root)) for p in _images_in(root / c)] for c in list_classes(root)}
    images = {p.stem: p for p in _images_in(root / "images")}
    masks = {p.stem: p for p in _images_in(root / "masks")}
    for stem in sorted(set(images) ^ set(masks)):
        missing = "mask" if stem in images else "image"
        have = images.get(stem) or masks.get(stem)
        raise DataError(f"{have}: no matching {missing} with the same file name in {root / (missing + 's')}")
    return {"all": [str(images[s].relative_to(root)) for s in sorted(images)]}


def load_or_create_splits(
    root: str | os.PathLike, task: str | None = None, seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> dict:
    """Train/val/test relative paths, drawn once (stratified by class) and saved as ROOT/splits.json.

    Later calls reuse the saved file whatever their seed: every stage must see the same split.
    """
    root = Path(root)
    task = task or detect_task(root)
    path = root / SPLITS_FILE
    if path.exists():
        try:
            splits = json.loads(path.read_text())
            names = [p for s in SPLITS for p in splits[s]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a valid splits file ({err}); delete it to draw the splits again") from None
        for rel in names:
            if not (root / rel).exists():
                raise DataError(f"{root / rel}: listed in {path} but missing; restore it or delete {path}")
        return splits
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) <= 0:
        raise ValueError(f"split fractions {fractions} must be positive and sum to 1")
    rng = random.Random(seed)
    splits: dict = {s: [] for s in SPLITS}
    for group, files in _all_samples(root, task).items():
        if len(files) < 3:
            raise DataError(f"{root / group if task == 'classify' else root}: {len(files)} image(s); "
                            f"at least 3 are needed to give train, val and test one each")
        files = sorted(files)
        rng.shuffle(files)
        n_val = max(1, round(fractions[1] * len(files)))
        n_test = max(1, round(fractions[2] * len(files)))
        splits["val"] += files[:n_val]
        splits["test"] += files[n_val:n_val + n_test]
        splits["train"] += files[n_val + n_test:]
    splits.update(seed=seed, fractions=list(fractions), task=task)
    write_json_atomic(path, splits)
    return splits


def _open_rgb(path: Path) -> Image.Image:
    """Any readable image as 8-bit RGB (grayscale, palette, RGBA and 16-bit included)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
            return img.convert("RGB")
    except Exception as err:  # PIL raises many types for a damaged file
        raise DataError(f"{path}: cannot read image ({type(err).__name__}: {err}); --skip-bad skips such files") from None


def _open_mask(path: Path, num_classes: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L") if img.mode not in ("L", "P", "I", "I;16") else img)
    except Exception as err:
        raise DataError(f"{path}: cannot read mask ({type(err).__name__}: {err})") from None
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255}:
        mask = (mask > 0).astype(np.uint8)  # binary masks are often saved as 0/255
    elif values.max() >= num_classes:
        raise DataError(f"{path}: mask value {int(values.max())} is not a class index (0..{num_classes - 1})")
    return mask.astype(np.int64)


def _is_readable(path: Path) -> str | None:
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.load()  # verify() does not decode pixel data; a truncated body fails here
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


class _FolderDataset(Dataset):
    def __init__(self, root, split: str, transform, skip_bad: bool, files: list[str]):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: allowed values are {', '.join(SPLITS)}")
        self.root, self.split, self.transform = Path(root), split, transform
        self.skipped: list[Path] = []
        kept = []
        for rel in files:
            for path in self._paths_of(rel):
                problem = _is_readable(path)
                if problem:
                    if not skip_bad:
                        raise DataError(f"{path}: cannot read image ({problem}); --skip-bad skips such files")
                    self.skipped.append(path)
                    break
            else:
                kept.append(rel)
        self.files = kept

    def _paths_of(self, rel: str) -> list[Path]:
        return [self.root / rel]

    def __len__(self) -> int:
        return len(self.files)


class ImageClassificationFolder(_FolderDataset):
    def __init__(self, root, split: str, transform=None, skip_bad: bool = False):
        root = Path(root)
        self.classes = list_classes(root)
        splits = load_or_create_splits(root, "classify")
        super().__init__(root, split, transform, skip_bad, splits[split])
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(self.root / rel, index[Path(rel).parts[0]]) for rel in self.files]
        self.targets = [label for _, label in self.samples]

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(_open_rgb(path)))
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class SegmentationFolder(_FolderDataset):
    def __init__(self, root, split: str, transform=None, skip_bad: bool = False, num_classes: int = 2):
        root = Path(root)
        self.num_classes = num_classes
        self._masks = {p.stem: p for p in _images_in(root / "masks")}
        splits = load_or_create_splits(root, "segment")
        super().__init__(root, split, transform, skip_bad, splits[split])

    def _paths_of(self, rel: str) -> list[Path]:
        return [self.root / rel, self._masks[Path(rel).stem]]

    def __getitem__(self, i: int):
        rel = self.files[i]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(_open_rgb(self.root / rel)))
        mask = tv_tensors.Mask(torch.from_numpy(_open_mask(self._masks[Path(rel).stem], self.num_classes)))
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask.as_subclass(torch.Tensor).long()


def build_transforms(task: str, input_size: int, train: bool) -> v2.Compose:
    """Joint image(+mask) transforms; masks are resized nearest and stay integer."""
    steps: list = [v2.Resize((input_size, input_size), antialias=True)]
    if train:
        steps += [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            # stain variation; ColorJitter touches images only, never masks
            v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.03),
        ]
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(NORMALIZE_MEAN, NORMALIZE_STD)]
    return v2.Compose(steps)


@dataclass
class DataBundle:
    task: str
    classes: list[str]
    num_classes: int
    train: DataLoader
    val: DataLoader
    test: DataLoader
    calib: DataLoader  # the TRAIN split with eval transforms: BN recalibration and INT8 calibration
    skipped: list[Path] = field(default_factory=list)


def _dataset(root: Path, task: str, split: str, transform, skip_bad: bool, num_classes: int):
    if task == "classify":
        return ImageClassificationFolder(root, split, transform, skip_bad)
    return SegmentationFolder(root, split, transform, skip_bad, num_classes)


def segmentation_classes(root: Path) -> list[str]:
    marker = root / "dataset.json"
    if marker.exists():
        classes = json.loads(marker.read_text()).get("classes")
        if classes:
            return list(classes)
    return ["background", "nucleus"]


def build_loaders(
    root: str | os.PathLike, input_size: int, batch_size: int, seed: int = 0, workers: int = 0,
    skip_bad: bool = False, distributed: bool = False, drop_last_train: bool = True,
) -> DataBundle:
    root = Path(root)
    task = detect_task(root)
    load_or_create_splits(root, task, seed=seed)
    classes = list_classes(root) if task == "classify" else segmentation_classes(root)
    n = len(classes)
    train_set = _dataset(root, task, "train", build_transforms(task, input_size, True), skip_bad, n)
    eval_tf = build_transforms(task, input_size, False)
    val_set, test_set = (_dataset(root, task, s, eval_tf, skip_bad, n) for s in ("val", "test"))
    calib_set = copy.copy(train_set)  # the same (already verified) files, without augmentation
    calib_set.transform = eval_tf
    generator = torch.Generator().manual_seed(seed)
    sampler = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=drop_last_train) if distributed else None
    common = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)
    train = DataLoader(train_set, shuffle=sampler is None, sampler=sampler, generator=generator,
                       drop_last=drop_last_train, **common)
    calib = DataLoader(calib_set, shuffle=True, generator=torch.Generator().manual_seed(seed + 1), **common)
    return DataBundle(
        task, classes, n, train, DataLoader(val_set, **common), DataLoader(test_set, **common), calib,
        skipped=train_set.skipped + val_set.skipped + test_set.skipped,
    )


def dataset_summary(root: str | os.PathLike) -> dict:
    """What a model card needs to say about the data: its own description (dataset.json) and split sizes."""
    root = Path(root)
    summary = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").exists() else {}
    splits = load_or_create_splits(root)
    summary.update(root=str(root), task=detect_task(root), split_sizes={s: len(splits[s]) for s in SPLITS})
    return summary


__all__: Sequence[str] = (
    "DataError", "DataBundle", "dataset_summary", "detect_task", "list_classes", "load_or_create_splits", "ImageClassificationFolder",
    "SegmentationFolder", "build_transforms", "build_loaders", "NORMALIZE_MEAN", "NORMALIZE_STD", "IMAGE_EXTENSIONS",
)
