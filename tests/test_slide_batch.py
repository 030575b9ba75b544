"""Folders of slides run overnight: a re-run skips the slides done with the same bundle and settings,
a run killed mid-slide continues where it stopped without a half-written slide looking finished,
one bad slide never stops the others, and reading ahead in threads changes no result."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tifffile

from bundle_helpers import bundle, read_csv, run_infer_here, write_slide  # noqa: F401 (a fixture)

SKIPPED = "done before with this bundle and these settings; skipped"


def _slides(folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    for i in range(n):  # 512 px at level 0 (no resolution stated): 21 x 21 tiles of 32 px
        write_slide(folder / f"s{i}.tif", side=512, tile=128, tissue=0.25 * (i + 1))
    return folder


def _outputs(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name not in ("done", "workers")
            and p.name not in ("results.csv", "run_metadata.json", "report.html")}


def test_a_folder_run_again_skips_what_is_done_and_redoes_what_changed(bundle, tmp_path):
    slides, out = _slides(tmp_path / "slides"), tmp_path / "out"
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 0, err
    first = {r["input"]: r for r in read_csv(out / "results.csv")}
    assert len(first) == 3 and {r["tiles"] for r in first.values()} == {str(21 * 21)}
    for name in ("s0", "s1", "s2"):  # every slide's outputs, under WSInfer's folder names and ours
        for path in (f"model-outputs-csv/{name}.csv", f"model-outputs-geojson/{name}.geojson",
                     f"tiles/{name}_tiles.csv", f"done/{name}.json"):
            assert (out / path).is_file(), path
    before = _outputs(out)
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 0 and err.count(SKIPPED) == 3 and "3 input(s) done (3 done before), 0 failed" in err
    assert _outputs(out) == before  # nothing was written again
    again = {r["input"]: r for r in read_csv(out / "results.csv")}
    assert {k: {f: v for f, v in r.items() if f != "skipped_done"} for k, r in again.items()} == first
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["finished"] and meta["inputs"] == 3
    # a changed setting is never mixed with old results: every slide is done again
    code, err = run_infer_here(bundle, slides, "--out", out, "--min-tissue", "0.9")
    assert code == 0 and SKIPPED not in err
    assert json.loads((out / "run_metadata.json").read_text())["settings"]["min_tissue"] == 0.9
    quarter = {Path(r["input"]).name: int(r["tissue_tiles"]) for r in read_csv(out / "results.csv")}["s0.tif"]
    # a slide replaced by another file of the same name is done again; the others are skipped
    write_slide(slides / "s0.tif", side=512, tile=128, tissue=1.0)
    code, err = run_infer_here(bundle, slides, "--out", out, "--min-tissue", "0.9")
    assert code == 0 and err.count(SKIPPED) == 2 and f"{slides / 's0.tif'}: {SKIPPED}" not in err
    rows = {Path(r["input"]).name: r for r in read_csv(out / "results.csv")}
    assert int(rows["s0.tif"]["tissue_tiles"]) > 2 * quarter  # all tissue now, not a quarter
    # --redo does everything again
    code, err = run_infer_here(bundle, slides, "--out", out, "--min-tissue", "0.9", "--redo")
    assert code == 0 and SKIPPED not in err


def test_a_run_killed_mid_slide_continues_at_that_slide(bundle, tmp_path, monkeypatch):
    from pathnas.deploy import infer

    slides, out = _slides(tmp_path / "slides"), tmp_path / "out"
    real, slides_started = infer.read_batches, []

    def killed_in_the_second_slide(*args, **kwargs):
        slides_started.append(1)
        for i, batch in enumerate(real(*args, **kwargs)):
            if len(slides_started) == 2 and i == 3:
                raise KeyboardInterrupt  # Ctrl-C, or the machine going down, half-way through s1
            yield batch

    monkeypatch.setattr(infer, "read_batches", killed_in_the_second_slide)
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 130 and "interrupted: nothing was left half-written" in err
    assert (out / "done" / "s0.json").is_file() and not (out / "done" / "s1.json").exists()
    # nothing of s1 looks finished, and nothing half-written is left under a temporary name either
    assert not list(out.rglob("s1*")) and not list(out.rglob("*.tmp"))
    meta = json.loads((out / "run_metadata.json").read_text())
    assert not meta["finished"] and [Path(r["input"]).name for r in meta["results"]] == ["s0.tif"]
    monkeypatch.undo()
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 0 and err.count(SKIPPED) == 1 and f"{slides / 's0.tif'}: {SKIPPED}" in err
    assert all((out / "done" / f"s{i}.json").is_file() for i in range(3))


def test_one_bad_slide_never_stops_the_others(bundle, tmp_path):
    slides, out = _slides(tmp_path / "slides", 2), tmp_path / "out"
    truncated = write_slide(slides / "truncated.tif", side=512, tile=128)
    truncated.write_bytes(truncated.read_bytes()[:-50_000])
    write_slide(slides / "blank.tif", side=512, tile=128, tissue=0.0)  # all glass
    damaged = write_slide(slides / "damaged.tif", side=512, tile=128, tissue=0.5, compression="jpeg")
    with tifffile.TiffFile(damaged) as tif:  # one JPEG tile's bytes zeroed, as a bad sector or copy would
        offset, count = tif.pages.first.dataoffsets[5], tif.pages.first.databytecounts[5]
    data = bytearray(damaged.read_bytes())
    data[offset:offset + count] = bytes(count)
    damaged.write_bytes(bytes(data))
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 1 and "Traceback" not in err  # the exit code says that a slide failed
    assert f"{damaged}: the tile at x=128, y=128 (512x512 px level) is damaged (" in err
    assert f"{slides / 'truncated.tif'}: FAILED: {slides / 'truncated.tif'}: tile data lies beyond the end" in err
    # a blank slide is a scanning error to a lab: a status of its own, counted as failed (exit code 1)
    assert f"{slides / 'blank.tif'}: NO TISSUE: 0 of 441 tiles classified, 441 background" in err
    meta = json.loads((out / "run_metadata.json").read_text())
    results = {Path(r["input"]).name: r for r in meta["results"]}
    assert meta["failed"] == 3 and results["truncated.tif"]["status"] == results["damaged.tif"]["status"] == "error"
    assert meta["statuses"] == {"error": 2, "no_tissue": 1, "ok": 2}
    assert results["blank.tif"]["status"] == "no_tissue" and "no tissue found" in results["blank.tif"]["error"]
    assert {r["status"] for r in read_csv(out / "results.csv") if r["input"].endswith("blank.tif")} == {"no_tissue"}
    assert results["s0.tif"]["status"] == results["s1.tif"]["status"] == "ok"
    # what a run records of each slide: resolution, level, tiles seen / background / classified, seconds
    s1 = results["s1.tif"]
    assert s1["slide_mpp"] is None and s1["level"] == 0 and s1["downsample"] == 1.0 and s1["tile_px_level0"] == 32
    assert s1["tiles"] == 441 and s1["tissue_tiles"] + s1["background_tiles"] == 441 and s1["seconds"] > 0
    assert meta["settings"] == {"tile": "auto", "tile_size": 32, "tile_overlap": 0.25, "min_tissue": 0.2,
                                "heatmap_size": 512, "device": "cpu"}
    # threads and batch size come from the bundle's device profile (x86-cpu-ort: 2 threads, slides at batch 8),
    # the threads at most the cores; a reader thread, two where the model leaves two cores
    cores = len(os.sched_getaffinity(0))
    assert meta["cores"] == cores and meta["threads"] == min(2, cores) and meta["batch_size"] == 8
    assert meta["reader_threads"] == max(1, min(2, cores - min(2, cores)))
    # a failed slide is tried again on the next run; the others are skipped (the blank one too: still blank)
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 1 and err.count(SKIPPED) == 3 and "truncated.tif: FAILED" in err and "damaged.tif: FAILED" in err


@pytest.mark.parametrize("compression", [None, "jpeg"])
def test_reading_ahead_in_threads_changes_no_result(bundle, tmp_path, compression):
    slide = write_slide(tmp_path / "slide.tif", side=1024, tile=128, tissue=0.6, compression=compression)
    results = []
    for threads in (0, 1, 4):
        out = tmp_path / f"out{threads}"
        code, err = run_infer_here(bundle, slide, "--out", out, "--reader-threads", str(threads), "--batch-size", "7")
        assert code == 0, err
        results.append([(out / name).read_bytes() for name in ("tiles/slide_tiles.csv", "model-outputs-csv/slide.csv",
                                                                "model-outputs-geojson/slide.geojson")])
    assert results[0] == results[1] == results[2]


def test_dicom_slides_need_openslide_4_and_a_folder_of_levels_is_one_slide(bundle, tmp_path, monkeypatch):
    import importlib.util

    from pathnas.deploy.infer import collect_inputs, output_names

    folder = tmp_path / "dicom"
    for slide in ("case1", "case2"):
        (folder / slide).mkdir(parents=True)
        for level in range(3):
            (folder / slide / f"level{level}.dcm").write_bytes(b"\0" * 128 + b"DICM")
    files, failures = collect_inputs([str(folder)])
    assert files == [folder / "case1" / "level0.dcm", folder / "case2" / "level0.dcm"] and not failures
    assert sorted(output_names(files).values()) == ["case1", "case2"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openslide" else real(name, *a))
    code, err = run_infer_here(bundle, folder, "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    needs = "reading DICOM slides needs OpenSlide 4.0 or later"
    assert err.count(f"{needs}: pip install 'openslide-python>=1.3' 'openslide-bin>=4.0'") == 2 * 2  # as it happens,
    monkeypatch.undo()                                                                   # and in the summary
    if importlib.util.find_spec("openslide") is not None:  # an OpenSlide too old for DICOM says its version
        import openslide

        monkeypatch.setattr(openslide, "__library_version__", "3.4.1")
        code, err = run_infer_here(bundle, folder, "--out", tmp_path / "out")
        assert code == 1 and f"{needs} (this is 3.4.1)" in err


def test_a_bundle_from_before_slide_batches_runs_slides_at_its_profile_batch(bundle, tmp_path):
    from bundle_helpers import copy_bundle, rehash

    old = copy_bundle(bundle, tmp_path / "old")
    rehash(old, lambda m: m["profile"].pop("slide_batch_size"))
    slides = _slides(tmp_path / "slides", 1)
    code, err = run_infer_here(old, slides, "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "run_metadata.json").read_text())["batch_size"] == 1


def _colour_model(path: Path) -> Path:
    """An ONNX model that answers from colour: logits from the tile's mean R, G, B, "pink" where red
    exceeds blue and "purple" where blue does (a real model file, run by onnxruntime as any bundle's)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([[40, -40], [0, 0], [-40, 40]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"])],
        "colour", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_slide_level_areas_match_a_slide_whose_class_regions_have_known_areas(tmp_path):
    """A 1024 px slide at 0.5 µm/px: columns 0-399 pink tissue, 400-699 purple tissue, the rest glass. Tiles of
    64 px (32 µm) with 25 % overlap; areas counted on the overview. Each class's area is within one tile's width
    along each boundary it has with another class (the tiles the boundary runs through); the tissue (whose edge
    is found pixel by pixel) within one overview pixel column."""
    import argparse

    import numpy as np
    from PIL import Image

    from pathnas.deploy.images import open_image
    from pathnas.deploy.infer import Model, SlideBatch, open_model_runner, plan_reading

    rng = np.random.default_rng(0)
    side, mpp, tile = 1024, 0.5, 64
    pixels = np.full((side, side, 3), 250, np.uint8)
    pixels[:, :400] = np.clip(rng.normal((230, 150, 200), 4, (side, 400, 3)), 0, 255)
    pixels[:, 400:700] = np.clip(rng.normal((140, 80, 190), 4, (side, 300, 3)), 0, 255)
    results = {}
    for stated in (mpp, None):
        slide = tmp_path / f"known-{stated}.tif"
        extra = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if stated else {}
        tifffile.imwrite(slide, pixels, tile=(128, 128), photometric="rgb", **extra)
        pre = {"input_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1 / 255, "mpp": None, "image_px": tile}
        model = Model(open_model_runner(_colour_model(tmp_path / "colour.onnx"), "onnxruntime", 1), pre,
                      ["pink", "purple"], "classify")
        out = tmp_path / f"out-{stated}"
        args = argparse.Namespace(batch_size=8, reader_threads=1, tile_overlap=0.25, min_tissue=0.2, heatmap_size=512,
                                  tile_dir=out / "tiles", mask_dir=out / "masks")
        source = open_image(slide)
        results[stated] = SlideBatch(model, args, out).tiled(slide, source, plan_reading(source, None, tile))
        source.close()
    row = results[mpp]
    mm2 = (mpp / 1000) ** 2  # one level-0 pixel
    band = tile * side * mm2  # one tile's width along a boundary the height of the slide
    assert row["tissue_mm2"] == pytest.approx(700 * side * mm2, abs=2 * side * mm2)
    assert row["area_mm2_pink"] == pytest.approx(400 * side * mm2, abs=band)
    assert row["area_mm2_purple"] == pytest.approx(300 * side * mm2, abs=band)  # its glass edge is the tissue's
    assert row["share_pink"] == pytest.approx(4 / 7, abs=tile / 700) and row["share_unclassified"] < 0.01
    assert row["share_pink"] + row["share_purple"] + row["share_unclassified"] == pytest.approx(1, abs=1e-5)
    assert row["tiles_pink"] + row["tiles_purple"] == row["tissue_tiles"] and row["tiles_pink"] > row["tiles_purple"]
    assert row["p95_pink"] > 0.99 and 0.5 < row["prob_pink"] < 0.7  # the mean: the pink share of the tissue tiles
    # the per-slide JSON says the same per class; the thumbnail is a fixed square for a person to glance at
    slide_json = json.loads(Path(row["slide_json"]).read_text())
    assert slide_json["classes"]["pink"]["area_mm2"] == row["area_mm2_pink"] and slide_json["area_unit"] == "mm2"
    thumb = Image.open(row["thumbnail"])
    assert thumb.size == (512, 512)
    # a slide that states no resolution: areas "unknown", shares as before
    unknown = results[None]
    assert unknown["tissue_mm2"] == unknown["area_mm2_pink"] == "unknown"
    assert unknown["share_pink"] == row["share_pink"]
