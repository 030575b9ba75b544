"""Synthetic data, image folders, splits, bad files and joint transforms."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pathnas.data import (
    CLASSES,
    DataError,
    ImageClassificationFolder,
    SegmentationFolder,
    build_loaders,
    build_transforms,
    detect_task,
    generate,
    load_or_create_splits,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root / "c", "classify", n_per_class=10, image_size=32, seed=0)
    generate(root / "s", "segment", n_per_class=4, image_size=32, seed=0)
    return root


def test_generation_is_deterministic_and_idempotent(synth, tmp_path):
    again = tmp_path / "again"
    generate(again, "classify", n_per_class=10, image_size=32, seed=0)
    for cls in CLASSES:
        for i in (0, 9):
            name = f"{cls}/{cls}_{i:04d}.png"
            assert (again / name).read_bytes() == (synth / "c" / name).read_bytes()
    before = (again / "dataset.json").stat().st_mtime_ns
    assert generate(again, "classify", n_per_class=10, image_size=32, seed=0)["counts"]["normal"] == 10
    assert (again / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="dataset.json: a data set with other parameters"):
        generate(again, "classify", n_per_class=10, image_size=32, seed=1)


def test_layouts(synth):
    assert detect_task(synth / "c") == "classify" and detect_task(synth / "s") == "segment"
    assert sorted(p.name for p in (synth / "c").iterdir() if p.is_dir()) == sorted(CLASSES)
    masks = sorted((synth / "s" / "masks").iterdir())
    assert len(masks) == 16 and [m.stem for m in masks] == [i.stem for i in sorted((synth / "s" / "images").iterdir())]
    values = np.unique(np.concatenate([np.asarray(Image.open(m)).ravel() for m in masks]))
    assert values.tolist() == [0, 1]
    with pytest.raises(DataError, match="no data set found"):
        detect_task(synth / "c" / "normal")


def test_grades_differ_in_nuclear_density(tmp_path):
    root = tmp_path / "d"
    generate(root, "segment", n_per_class=8, image_size=48, seed=3)
    masks = [np.asarray(Image.open(p)) for p in sorted((root / "masks").iterdir())]
    per_grade = [np.mean([m.mean() for m in masks[g * 8:(g + 1) * 8]]) for g in range(4)]
    assert per_grade == sorted(per_grade), per_grade  # normal < benign < in situ < invasive
    assert per_grade[0] > 0.01


def test_splits_are_stratified_saved_and_reused(synth):
    splits = load_or_create_splits(synth / "c", seed=0)
    assert json.loads((synth / "c" / "splits.json").read_text())["train"] == splits["train"]
    for cls in CLASSES:
        for split in ("train", "val", "test"):
            assert any(p.startswith(cls + "/") for p in splits[split]), (cls, split)
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["val"]) & set(splits["test"])
    assert load_or_create_splits(synth / "c", seed=123)["val"] == splits["val"]  # the first draw wins


def test_a_missing_split_file_is_named(tmp_path):
    root = tmp_path / "d"
    generate(root, "classify", n_per_class=4, image_size=16, seed=0)
    splits = load_or_create_splits(root)
    (root / splits["val"][0]).unlink()
    with pytest.raises(DataError, match="listed in .*splits.json but missing"):
        load_or_create_splits(root)


def _corrupt_one(root):
    splits = load_or_create_splits(root)
    victim = root / splits["train"][0]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated PNG
    return victim


def test_a_corrupt_image_stops_the_run_naming_the_file(tmp_path):
    root = tmp_path / "d"
    generate(root, "classify", n_per_class=5, image_size=16, seed=0)
    victim = _corrupt_one(root)
    with pytest.raises(DataError) as err:
        ImageClassificationFolder(root, "train")
    assert str(victim) in str(err.value) and "--skip-bad" in str(err.value)
    bundle = build_loaders(root, 16, 4, skip_bad=True)
    assert bundle.skipped == [victim]
    assert len(bundle.train.dataset) == len(load_or_create_splits(root)["train"]) - 1


def test_grayscale_rgba_and_16bit_images_load_as_rgb(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20), 50 * i, np.uint8), "L").save(root / cls / f"gray{i}.png")
            Image.fromarray(np.full((20, 20, 4), 90, np.uint8), "RGBA").save(root / cls / f"rgba{i}.png")
            Image.fromarray(np.full((20, 20), 4000 * (i + 1), np.uint16)).save(root / cls / f"deep{i}.png")
    ds = ImageClassificationFolder(root, "train", transform=build_transforms("classify", 16, False))
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label in (0, 1)


def test_segmentation_pairing_errors_name_the_file(tmp_path):
    root = tmp_path / "d"
    generate(root, "segment", n_per_class=3, image_size=16, seed=0)
    orphan = root / "masks" / "img_0005.png"
    orphan.rename(root / "masks" / "other.png")
    with pytest.raises(DataError, match="img_0005.png: no matching mask"):
        load_or_create_splits(root)


def test_mask_values_outside_the_classes_are_refused(tmp_path):
    root = tmp_path / "d"
    generate(root, "segment", n_per_class=3, image_size=16, seed=0)
    splits = load_or_create_splits(root)
    stem = splits["train"][0].split("/")[-1]
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / stem)
    ds = SegmentationFolder(root, "train")
    index = ds.files.index(splits["train"][0])
    with pytest.raises(DataError, match="mask value 7 is not a class index"):
        ds[index]


def test_joint_transform_keeps_the_mask_aligned():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :2] = 255  # a bright stripe on the left ...
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[:, :2] = 1  # ... labelled in the mask
    tf = build_transforms("segment", 8, train=True)
    torch.manual_seed(0)
    for _ in range(10):
        out_image, out_mask = tf(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_mask.dtype == torch.int64 and set(out_mask.unique().tolist()) <= {0, 1}
        bright = out_image.mean(0) > 0
        assert torch.equal(bright, out_mask.bool())


def test_loaders_yield_batches_of_the_right_shape(synth):
    bundle = build_loaders(synth / "c", 32, 4)
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64 and bundle.num_classes == 4
    assert len(bundle.calib.dataset) == len(bundle.train.dataset)
    seg = build_loaders(synth / "s", 32, 2)
    x, y = next(iter(seg.val))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and seg.classes == ["background", "nucleus"]
