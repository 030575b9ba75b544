"""Packed data sets (pathnas.data.shards): the same splits and batches as the image folder, resumable and
verified packing, bad files named or skipped, augmentation of whole batches on the training device."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import pathnas.data.shards as shards
from pathnas.data import (DataError, build_loaders, data_fingerprint, detect_task, generate, list_classes,
                          load_or_create_splits)
from pathnas.data.shards import BatchAugment, open_pack, pack
from pathnas.errors import ConfigError
from cli_helpers import pathnas_edge
from test_data import copy_of, synth as folders  # noqa: F401 (a fixture: c/ classify, s/ segment)


def test_a_pack_reads_as_its_image_folder_with_the_same_splits_and_batches(folders, tmp_path):
    source = folders / "c"
    summary = pack(source, tmp_path / "p", size=32)
    assert summary["split_sizes"] == {s: len(load_or_create_splits(source)[s]) for s in ("train", "val", "test")}
    packed, folder = build_loaders(tmp_path / "p", 32, 4), build_loaders(source, 32, 4)
    assert detect_task(tmp_path / "p") == "classify" and list_classes(tmp_path / "p") == list_classes(source)
    assert packed.classes == folder.classes and len(packed.train.dataset) == len(folder.train.dataset)
    for a, b in zip(packed.val, folder.val):  # eval batches: the folder's eval transform, exactly
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    (xa, ya), (xb, yb) = next(iter(packed.train)), next(iter(folder.train))
    assert xa.dtype == torch.uint8 and torch.equal(ya, yb)  # the same order; augmentation waits for the device
    assert packed.train.dataset.device_transform is not None
    assert data_fingerprint(tmp_path / "p") != data_fingerprint(source)


def test_a_segmentation_pack_keeps_masks_and_resizes_them_nearest(folders, tmp_path):
    pack(folders / "s", tmp_path / "p", size=16)
    bundle = build_loaders(tmp_path / "p", 16, 2)
    x, y = next(iter(bundle.val))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (2, 16, 16)
    assert set(torch.unique(y).tolist()) <= set(range(bundle.num_classes))


def test_packing_again_verifies_by_content_hash_and_names_what_changed(folders, tmp_path):
    source = copy_of(folders / "c", tmp_path)
    out = tmp_path / "p"
    assert pack(source, out, size=32)["verified"] is False
    assert pack(source, out, size=32)["verified"] is True
    with pytest.raises(ConfigError, match="size"):
        pack(source, out, size=24)
    images = np.load(out / shards.IMAGES_FILE, mmap_mode="r+")
    images[3, 0, 0, 0] ^= 1
    images.flush()
    del images
    with pytest.raises(DataError, match=rf"{out / shards.IMAGES_FILE}: its content does not match"):
        pack(source, out, size=32)


def test_a_changed_source_file_is_named(folders, tmp_path):
    source = copy_of(folders / "c", tmp_path)
    pack(source, tmp_path / "p", size=32)
    victim = source / load_or_create_splits(source)["val"][0]
    other = source / load_or_create_splits(source)["val"][1]
    victim.write_bytes(other.read_bytes())
    with pytest.raises(DataError, match=rf"{victim}: changed since it was packed"):
        pack(source, tmp_path / "p", size=32)


def test_a_killed_pack_resumes_to_the_same_arrays(folders, tmp_path, monkeypatch):
    source = folders / "c"
    pack(source, tmp_path / "whole", size=32)
    monkeypatch.setattr(shards, "_CHUNK", 5)

    def killed(done, total):
        if done == 13:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        pack(source, tmp_path / "p", size=32, advance=killed)
    assert json.loads((tmp_path / "p" / shards.PACK_PROGRESS).read_text())["done"] == 10
    with pytest.raises(DataError, match="not finished"):
        build_loaders(tmp_path / "p", 32, 4)
    seen = []
    pack(source, tmp_path / "p", size=32, advance=lambda done, total: seen.append(done))
    assert seen[0] == 11  # rows 11.. only: the ten recorded were not redone
    whole, resumed = open_pack(tmp_path / "whole").index, open_pack(tmp_path / "p").index
    assert resumed["sha256"] == whole["sha256"] and resumed["source_sha256"] == whole["source_sha256"]
    assert not (tmp_path / "p" / shards.PACK_PROGRESS).exists()


def test_a_corrupt_image_stops_the_pack_naming_it_unless_skipped(folders, tmp_path):
    source = copy_of(folders / "c", tmp_path)
    victim = source / load_or_create_splits(source)["train"][0]
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(DataError) as err:
        pack(source, tmp_path / "p", size=32)
    assert str(victim) in str(err.value) and "--skip-bad" in str(err.value)
    shutil.rmtree(tmp_path / "p")
    summary = pack(source, tmp_path / "p", size=32, skip_bad=True)
    rel = victim.relative_to(source).as_posix()
    assert summary["skipped"] == 1 and json.loads((source / "splits.json").read_text())["skipped"] == [rel]
    bundle = build_loaders(tmp_path / "p", 32, 4)
    folder = build_loaders(source, 32, 4)  # the folder leaves the listed file out too
    assert len(bundle.train.dataset) == len(folder.train.dataset) == 4 * 6 - 1
    assert bundle.skipped == [tmp_path / "p" / rel]


def test_a_folder_of_other_files_is_not_overwritten(folders, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        pack(folders / "c", tmp_path / "p", size=32)


def test_batch_augmentation_is_per_image_seeded_and_keeps_masks_aligned():
    aug = BatchAugment(seed=1, input_size=16)
    x = torch.arange(4 * 3 * 16 * 16, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(4, 3, 16, 16)
    mask = x[:, 0].clone()  # a mask that is the red channel: geometry must move both alike
    a, ma = aug(x, mask, epoch=0, step=0)
    b, mb = aug(x, mask, epoch=0, step=0)
    assert torch.equal(a, b) and torch.equal(ma, mb)  # a function of (seed, epoch, step, rank)
    c, _ = aug(x, mask, epoch=1, step=0)
    assert not torch.equal(a, c)
    p = aug.params(4, 0, 0, 0)
    assert len(set(p["quarter_turns"].tolist())) > 1 or len(set(p["hflip"].tolist())) > 1  # per image
    plain = BatchAugment(seed=1, input_size=16, brightness=0, contrast=0, saturation=0, hue=0)
    g, mg = plain(x, mask, epoch=0, step=0)
    red = g[:, 0] * 0.229 + 0.485  # undo the normalisation of the red channel
    assert torch.allclose(red, mg.float() / 255, atol=1e-5)  # same flips and turns as the mask
    assert a.dtype == torch.float32 and a.shape == (4, 3, 16, 16)


def test_cli_data_pack_names_a_bad_file_and_exits_2(folders, tmp_path):
    source = copy_of(folders / "c", tmp_path)
    victim = source / load_or_create_splits(source)["test"][0]
    victim.write_bytes(b"not an image")
    code, out, err = pathnas_edge("data", "pack", source, "--out", tmp_path / "p", "--size", 32)
    assert code == 2 and str(victim) in err.replace("\n", "") and "Traceback" not in err
    code, out, err = pathnas_edge("data", "pack", source, "--out", tmp_path / "p", "--size", 32, "--skip-bad", "--json")
    assert code == 0, err
    assert json.loads(out)["skipped"] == 1


def test_the_colour_map_is_torchvisions_brightness_contrast_and_saturation():
    from torchvision.transforms.v2 import functional as F

    x = 0.3 + 0.4 * torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # no clamping anywhere
    p = {"jitter": torch.tensor([[1.08, 0.93, 1.05], [0.95, 1.07, 0.91]]), "hue": torch.zeros(2)}
    ours = BatchAugment._colour(x.clone(), p)
    for i, (b, c, s) in enumerate(p["jitter"].tolist()):
        theirs = F.adjust_saturation(F.adjust_contrast(F.adjust_brightness(x[i], b), c), s)
        assert torch.allclose(ours[i], theirs, atol=1e-5)
    turned = BatchAugment._colour(x.clone(), {"jitter": torch.ones(2, 3), "hue": torch.tensor([0.03, -0.03])})
    grey = torch.tensor([0.2989, 0.587, 0.114])[None, :, None, None]
    assert torch.allclose((turned * grey).sum(1), (x * grey).sum(1), atol=1e-5)  # a hue turn keeps the luma
    assert (turned - x).abs().max() > 1e-3
