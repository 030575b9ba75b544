"""Synthetic data, image folders, splits, bad files, joint transforms and loaders."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from pathnas.data import (
    CLASSES,
    GENERATOR_VERSION,
    DataError,
    ImageClassificationFolder,
    SegmentationFolder,
    build_loaders,
    build_transforms,
    detect_task,
    generate,
    load_or_create_splits,
)

N = 8  # images per grade in the shared data sets


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Shared, read-only data sets; a test that changes files works on a copy (see `copy_of`)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root / "c", "classify", n_per_class=N, image_size=32, seed=0)
    generate(root / "s", "segment", n_per_class=3, image_size=32, seed=0)
    return root


def copy_of(src, tmp_path):
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- generator -------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["classify", "segment"])
def test_generation_is_byte_identical(synth, tmp_path, task):
    reference = synth / ("c" if task == "classify" else "s")
    generate(tmp_path / "again", task, n_per_class=N if task == "classify" else 3, image_size=32, seed=0)
    assert files_of(tmp_path / "again") == files_of(reference)
    generate(tmp_path / "other_seed", task, n_per_class=3, image_size=32, seed=1)
    first = sorted((tmp_path / "other_seed").rglob("*.png"))[0]
    assert first.read_bytes() != (reference / first.relative_to(tmp_path / "other_seed")).read_bytes()


def test_generation_is_idempotent_and_refuses_other_parameters(tmp_path):
    root = tmp_path / "d"
    summary = generate(root, "classify", n_per_class=3, image_size=16, seed=0)
    assert summary == json.loads((root / "dataset.json").read_text())
    assert summary["generator"] == GENERATOR_VERSION and summary["classes"] == list(CLASSES)
    assert summary["counts"] == {c: 3 for c in CLASSES} and (summary["image_size"], summary["seed"]) == (16, 0)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate(root, "classify", n_per_class=3, image_size=16, seed=0) == summary
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps  # nothing rewritten
    with pytest.raises(DataError, match=r"d/dataset\.json: a data set with other parameters.*seed=0 \(asked 1\)"):
        generate(root, "classify", n_per_class=3, image_size=16, seed=1)
    with pytest.raises(DataError, match="dataset.json"):
        generate(root, "segment", n_per_class=3, image_size=16, seed=0)
    assert not [p for p in root.rglob(".*")]  # no temporary files left behind


def test_generation_refuses_a_folder_holding_other_files(tmp_path):
    root = tmp_path / "d"
    (root / "normal").mkdir(parents=True)
    (root / "normal" / "patient_7.png").write_bytes(b"not ours")
    with pytest.raises(DataError, match=r"normal/patient_7\.png: .* would not write"):
        generate(root, "classify", n_per_class=3, image_size=16)
    assert not (root / "dataset.json").exists()


def test_layouts(synth):
    assert detect_task(synth / "c") == "classify" and detect_task(synth / "s") == "segment"
    for cls in CLASSES:
        assert sorted(p.name for p in (synth / "c" / cls).iterdir()) == [f"{cls}_{i:04d}.png" for i in range(N)]
    images = sorted((synth / "s" / "images").iterdir())
    masks = sorted((synth / "s" / "masks").iterdir())
    assert [m.name for m in masks] == [i.name for i in images] == [f"img_{i:04d}.png" for i in range(12)]
    for image_path, mask_path in zip(images, masks):
        image, mask = Image.open(image_path), Image.open(mask_path)
        assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (32, 32)
        values = np.asarray(mask)
        assert set(np.unique(values).tolist()) == {0, 1}  # every tile has nuclei, and only labels 0/1
        # Nuclei are the dark purple pixels: the mask must sit on them.
        red = np.asarray(image)[..., 0].astype(float)
        assert red[values == 1].mean() + 60 < red[values == 0].mean()
    with pytest.raises(DataError, match="no data set found.*class subfolders.*images/ and ROOT/masks/"):
        detect_task(synth / "c" / "normal")


def test_grades_differ_in_nuclear_density_but_overlap(synth):
    # Fraction of nucleus-coloured pixels (hematoxylin is far less red than eosin) per image.
    frac = {cls: [(np.asarray(Image.open(p))[..., 0] < 160).mean() for p in sorted((synth / "c" / cls).iterdir())]
            for cls in CLASSES}
    means = [np.mean(frac[cls]) for cls in CLASSES]
    assert means == sorted(means) and means[0] > 0.02 and means[-1] > 2 * means[0], means
    assert max(frac["normal"]) > min(frac["benign"])  # neighbouring grades overlap: not trivial


# --- splits ----------------------------------------------------------------------------------------

def test_splits_are_stratified_saved_and_reused(synth, tmp_path):
    root = copy_of(synth / "c", tmp_path)
    splits = load_or_create_splits(root, seed=0)
    saved = json.loads((root / "splits.json").read_text())
    assert saved == splits and saved["seed"] == 0 and saved["fractions"] == [0.7, 0.15, 0.15]
    listed = splits["train"] + splits["val"] + splits["test"]
    assert sorted(listed) == sorted(f"{c}/{c}_{i:04d}.png" for c in CLASSES for i in range(N))  # disjoint, complete
    for cls in CLASSES:
        sizes = [sum(p.startswith(cls + "/") for p in splits[s]) for s in ("train", "val", "test")]
        assert sizes == [6, 1, 1], (cls, sizes)  # stratified: every class in every split
    again = load_or_create_splits(root, seed=123, fractions=(0.5, 0.25, 0.25))
    assert again == splits  # the first draw wins
    fresh = copy_of(synth / "c", tmp_path / "fresh")
    assert load_or_create_splits(fresh, seed=123)["val"] != splits["val"]  # the seed matters when drawing


def test_segmentation_splits_are_by_file(synth, tmp_path):
    splits = load_or_create_splits(copy_of(synth / "s", tmp_path))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    assert all(p.startswith("images/") for s in ("train", "val", "test") for p in splits[s])


def test_too_few_images_and_missing_files_are_named(tmp_path):
    root = tmp_path / "d"
    for cls, n in (("a", 3), ("b", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / cls / f"{i}.png")
    with pytest.raises(DataError, match=r"d/b: 2 image\(s\); at least 3"):
        load_or_create_splits(root)
    Image.new("RGB", (8, 8)).save(root / "b" / "2.png")
    splits = load_or_create_splits(root)
    (root / splits["val"][0]).unlink()
    with pytest.raises(DataError, match=rf"{splits['val'][0]}: listed in .*splits.json but missing"):
        load_or_create_splits(root)


# --- bad files -------------------------------------------------------------------------------------

def test_a_corrupt_image_stops_the_run_naming_the_file_unless_skipped(synth, tmp_path):
    root = copy_of(synth / "c", tmp_path)
    victim = root / load_or_create_splits(root)["train"][0]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated PNG
    with pytest.raises(DataError) as err:
        ImageClassificationFolder(root, "train")
    assert str(victim) in str(err.value) and "--skip-bad" in str(err.value)
    ds = ImageClassificationFolder(root, "train", skip_bad=True)
    assert ds.skipped == [victim] and victim not in [p for p, _ in ds.samples] and len(ds) == 4 * 6 - 1
    bundle = build_loaders(root, 32, 4, skip_bad=True)
    assert bundle.skipped == [victim] and len(bundle.train.dataset) == 4 * 6 - 1
    assert sum(len(y) for _, y in bundle.train) == 20  # drop_last: 23 images, batches of 4


def test_grayscale_palette_rgba_and_16bit_images_load_as_rgb(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((20, 20), 50 * i, np.uint8), "L").save(root / cls / f"gray{i}.png")
            Image.fromarray(np.full((20, 20, 4), 90, np.uint8), "RGBA").save(root / cls / f"rgba{i}.png")
            Image.fromarray(np.full((20, 20), 4000 * (i + 1), np.uint16)).save(root / cls / f"deep{i}.tif")
            Image.new("RGB", (20, 20), (200, 30, 90)).quantize(4).save(root / cls / f"palette{i}.PNG")
    ds = ImageClassificationFolder(root, "train")
    assert ds.classes == ["a", "b"] and len(ds) == 2 * 12 - 2 * 2 * 2  # 12 per class: 8 train, 2 val, 2 test
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 20, 20) and image.dtype == torch.uint8 and label == ds.targets[i]
    deep = [i for i, (p, _) in enumerate(ds.samples) if p.suffix == ".tif"][0]
    assert ds[deep][0].max() == 255  # 16-bit scaled to 8 bits, not clipped


def test_segmentation_pairing_errors_name_the_file(synth, tmp_path):
    root = copy_of(synth / "s", tmp_path)
    (root / "masks" / "img_0005.png").rename(root / "masks" / "other.png")
    with pytest.raises(DataError, match=r"images/img_0005\.png: no matching mask"):
        load_or_create_splits(root)
    (root / "masks" / "other.png").rename(root / "masks" / "img_0005.png")
    splits = load_or_create_splits(root)
    stray = root / "masks" / "img_9999.png"
    Image.new("L", (32, 32)).save(stray)
    with pytest.raises(DataError, match=r"masks/img_9999\.png: no matching image"):
        SegmentationFolder(root, "train")
    stray.unlink()
    (root / splits["train"][0].replace("images/", "masks/")).unlink()
    with pytest.raises(DataError, match="no matching mask"):
        SegmentationFolder(root, "train")


def test_mask_values_binary_255_and_out_of_range(synth, tmp_path):
    root = copy_of(synth / "s", tmp_path)
    splits = load_or_create_splits(root)
    image_rel = splits["train"][0]
    mask_path = root / image_rel.replace("images/", "masks/")
    binary = np.asarray(Image.open(mask_path)).copy()
    Image.fromarray(binary * 255).save(mask_path)
    ds = SegmentationFolder(root, "train")
    index = [p for p, _ in ds.samples].index(root / image_rel)
    image, mask = ds[index]
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(binary.astype(np.int64)))
    assert image.shape == (3, 32, 32)
    Image.fromarray(np.where(binary > 0, 7, 0).astype(np.uint8)).save(mask_path)
    with pytest.raises(DataError, match=rf"{mask_path.name}: mask value 7 is not a class index \(0..1\)"):
        ds[index]
    assert SegmentationFolder(root, "train", num_classes=8)[index][1].max() == 7


# --- transforms and loaders ------------------------------------------------------------------------

def test_joint_transform_keeps_the_mask_aligned():
    # An L-shaped bright region: no flip or rotation maps it onto itself, so a misaligned mask shows.
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    mask = torch.zeros(16, 16, dtype=torch.int64)
    for region in ((slice(2, 14), slice(2, 5)), (slice(11, 14), slice(2, 10))):
        image[(slice(None), *region)] = 255
        mask[region] = 1
    tf = build_transforms("segment", 32, train=True)  # also upsamples: the mask must stay nearest/integer
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        out_image, out_mask = tf(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert out_image.dtype == torch.float32 and out_image.shape == (3, 32, 32)
        assert out_mask.dtype == torch.int64 and set(out_mask.unique().tolist()) == {0, 1}
        assert int(out_mask.sum()) == 4 * int(mask.sum())  # exact 2x resize, flips and 90-degree turns
        bright = out_image.mean(0) > 0.5  # normalised: the bright pixels stay well above 0
        assert (bright == out_mask.bool()).float().mean() > 0.97  # only a soft edge row from the bilinear image
        seen.add(tuple(out_mask.flatten().tolist()))
    assert len(seen) >= 4  # the augmentation really moved things


def test_eval_transform_normalises_with_imagenet_statistics():
    tf = build_transforms("classify", 8, train=False)
    out = tf(tv_tensors.Image(torch.full((3, 4, 4), 255, dtype=torch.uint8)))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert out.shape == (3, 8, 8) and torch.allclose(out[:, 0, 0], expected, atol=1e-5)


def test_loaders_yield_batches_of_the_right_shape(synth, tmp_path):
    root = copy_of(synth / "c", tmp_path)
    bundle = build_loaders(root, 24, 4, seed=3)
    assert bundle.task == "classify" and bundle.classes == sorted(CLASSES) and bundle.num_classes == 4
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(bundle.val.dataset) == len(bundle.test.dataset) == 4 and len(bundle.calib.dataset) == 24
    assert bundle.skipped == []
    assert torch.equal(next(iter(build_loaders(root, 24, 4, seed=3).train))[1], y)  # seeded shuffle
    assert json.loads((root / "splits.json").read_text())["seed"] == 3

    seg = build_loaders(copy_of(synth / "s", tmp_path), 32, 2)
    x, y = next(iter(seg.val))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32) and y.dtype == torch.int64
    assert seg.task == "segment" and seg.classes == ["background", "nucleus"] and seg.num_classes == 2
    assert set(torch.unique(y).tolist()) == {0, 1}


# --- reproducible loading --------------------------------------------------------------------------

def test_an_epochs_batches_depend_on_the_seed_and_epoch_only(synth, tmp_path):
    from pathnas.data import set_epoch

    root = copy_of(synth / "c", tmp_path)

    def epoch_batches(workers: int, epoch: int, seed: int = 3) -> list[torch.Tensor]:
        loaders = build_loaders(root, 24, 4, seed=seed, workers=workers)
        set_epoch(loaders.train, epoch)
        return [x for x, _ in loaders.train]

    first = epoch_batches(0, 1)
    # the same images, the same augmentation, whichever process loads them: workers change nothing
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(2, 1)))
    assert not torch.equal(first[0], epoch_batches(0, 2)[0])  # another epoch, another order
    assert not torch.equal(first[0], epoch_batches(0, 1, seed=4)[0])
    calib = build_loaders(root, 24, 4, seed=3).calib
    assert torch.equal(next(iter(calib))[0], next(iter(calib))[0])  # BN recalibration: the same images each time


def test_iterating_a_loader_leaves_the_global_random_stream_alone(synth, tmp_path):
    loaders = build_loaders(copy_of(synth / "c", tmp_path), 24, 4, seed=3)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for loader in (loaders.train, loaders.val, loaders.calib):
        next(iter(loader))
    assert torch.equal(torch.rand(3), expected)  # dropout and mixup draw the same numbers with or without it


# --- bad data: found when the data set is built, recorded, reported ----------------------------------

def test_skipped_files_are_listed_in_splits_json_and_left_out_again(synth, tmp_path):
    root = copy_of(synth / "c", tmp_path)
    victim = root / load_or_create_splits(root)["val"][0]
    victim.write_bytes(victim.read_bytes()[:60])
    bundle = build_loaders(root, 32, 4, skip_bad=True)
    assert bundle.skipped == [victim]
    assert json.loads((root / "splits.json").read_text())["skipped"] == [victim.relative_to(root).as_posix()]
    # Every later reader (export, validation: no --skip-bad there) leaves the listed file out too.
    assert build_loaders(root, 32, 4).skipped == [victim]
    other = root / load_or_create_splits(root)["test"][0]
    other.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{other}: cannot read the file"):
        build_loaders(root, 32, 4)  # a new bad file is not on the list: it stops the run


def test_a_mask_of_another_size_is_found_when_the_data_set_is_built(synth, tmp_path):
    root = copy_of(synth / "s", tmp_path)
    image_rel = load_or_create_splits(root)["train"][0]
    mask = root / image_rel.replace("images/", "masks/")
    Image.new("L", (16, 32)).save(mask)
    with pytest.raises(DataError) as err:
        SegmentationFolder(root, "train")  # not in a loader worker in the middle of an epoch
    assert str(err.value).startswith(f"{mask}: the mask is 16x32 pixels, its image") and "--skip-bad" in str(err.value)
    assert SegmentationFolder(root, "train", skip_bad=True).skipped == [mask]


def test_unused_folders_and_broken_symlinks_are_reported(synth, tmp_path, caplog):
    root = copy_of(synth / "c", tmp_path)
    (root / "empty_class").mkdir()
    nested = root / "normal" / "patient_7"
    nested.mkdir()
    shutil.copy(next((root / "benign").iterdir()), nested / "x.png")
    with caplog.at_level("WARNING", logger="pathnas.data"):
        classes = build_loaders(root, 32, 4).classes
    assert "empty_class" not in classes and len(classes) == 4
    text = caplog.text
    assert f"{root / 'empty_class'}: a folder without images, not a class" in text
    assert f"{nested}: a folder inside normal/ with 1 image(s), not used" in text
    link = root / "benign" / "zz_link.png"
    link.symlink_to(tmp_path / "gone.png")
    (root / "splits.json").unlink()
    with pytest.raises(DataError, match=rf"{link}: cannot read the file \(a symlink to .*gone.png, which does not "):
        build_loaders(root, 32, 4)
