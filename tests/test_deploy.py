"""Bundles (package, verify, tamper, latency regression) and the torch-free workstation runtime
(pathnas-infer: imports, preprocessing, bad inputs, streamed slide tiling, segmentation), and the
pipeline's package and smoke-test stages. Signatures and tampering: test_bundle_security.py; slides
as scanners write them: test_slides.py. No test here depends on the machine's speed."""
from __future__ import annotations

import json
import shutil
import stat
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bundle_helpers import (bundle, classify_run, cli, copy_bundle, flip_a_byte,  # noqa: F401 (fixtures)
                            imported_distributions, infer, make_validated_run, read_csv, run_infer_capture,
                            run_infer_here, torch_free)
from pathnas.pipeline import RunLayout


def test_package_writes_a_self_contained_verified_bundle(bundle):
    from pathnas.io import sha256_file

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == {"preprocess.json", "labels.json", "MODEL_CARD.md", "config.json",
                                      "model/onnxruntime-fp32/model.onnx",  # no OpenVINO IR in an ORT bundle
                                      "reference/latency_reference.onnx"}
    assert all(sha256_file(bundle / name) == digest for name, digest in manifest["files"].items())
    assert manifest["architecture"] == "3575" and manifest["profile"]["name"] == "x86-cpu-ort"
    assert manifest["classes"] == json.loads((bundle / "labels.json").read_text())
    baseline = manifest["latency_baseline"]
    assert baseline["device"] == "x86-cpu-ort" and len(baseline["samples_ms"]) >= 5 and baseline["median_ms"] > 0
    # the reference model was timed sample for sample beside the model
    assert manifest["latency_reference"] == "reference/latency_reference.onnx"
    assert len(baseline["reference_samples_ms"]) == len(baseline["samples_ms"])
    assert baseline["reference_sha256"] == manifest["files"]["reference/latency_reference.onnx"]
    assert baseline["model_sha256"] == manifest["files"]["model/onnxruntime-fp32/model.onnx"]
    assert [r["status"] for r in manifest["validation"]["rows"]] == ["passed"]
    assert "onnxruntime" in manifest["versions"]["validated_with"] and manifest["dataset"]["split_sizes"]
    assert {"numpy", "pillow", "tifffile", "onnxruntime", "openvino"} <= set(manifest["versions"]["packaged_with"])
    # the training resolution travels with the preprocessing: the synthetic data declares 64 um per tile
    pre = json.loads((bundle / "preprocess.json").read_text())
    assert pre["mpp"] == pytest.approx(2.0) and pre["image_px"] == 32 and manifest["dataset"]["mpp"] == pytest.approx(2.0)
    # WSInfer's model config, as its zoo's schema has it, says the same as preprocess.json and the labels
    config = json.loads((bundle / "config.json").read_text())
    assert manifest["config"] == "config.json" and config == {
        "spec_version": "1.0", "architecture": "3575", "num_classes": 4, "class_names": list(manifest["classes"]),
        "patch_size_pixels": 32, "spacing_um_px": pytest.approx(2.0),
        "transform": [{"name": "Resize", "arguments": {"size": pre["input_size"]}}, {"name": "ToTensor"},
                      {"name": "Normalize", "arguments": {"mean": pre["mean"], "std": pre["std"]}}]}
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Intended use" in card and "**Synthetic data**" in card and "## Limitations" in card
    assert "**Not retrained**" in card and "Trained at 2 µm per pixel" in card
    assert "`pathnas-infer verify BUNDLE`" in card and "`pathnas-infer regress BUNDLE`" in card
    assert f"median {baseline['median_ms']:.3f} ms" in card
    with zipfile.ZipFile(f"{bundle}.zip") as archive:
        infos = archive.infolist()
    files = [i for i in infos if not i.is_dir()]
    assert sorted(i.filename for i in files) == sorted([*manifest["files"], "manifest.json"])
    # readable by other accounts: the bundle's files, its folders, and what unzip will create
    assert {stat.S_IMODE(i.external_attr >> 16) for i in files} == {0o644}
    assert {stat.S_IMODE(i.external_attr >> 16) for i in infos if i.is_dir()} == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in bundle.rglob("*") if p.is_file()} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in [bundle, *bundle.rglob("*")] if p.is_dir()} == {0o755}
    assert stat.S_IMODE(Path(f"{bundle}.zip").stat().st_mode) == 0o644
    code, out, _ = cli("verify", bundle)
    assert code == 0 and "every file matches" in out and "UNSIGNED" in out
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_package_publishes_readable_files_even_from_a_private_run(classify_run, tmp_path):
    """A run whose files are 0600 (another umask, an older writer) still gives a bundle others can read."""
    run, _ = classify_run
    private = shutil.copytree(run, tmp_path / "run")
    for path in private.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    code, _, err = cli("package", private, "--device", "cpu", "--out", tmp_path / "b", "--no-latency")
    assert code == 0, err
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "b").rglob("*") if p.is_file()} == {0o644}
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755


def test_model_card_for_a_retrained_model_on_real_data(bundle):
    from pathnas.deploy.bundle import model_card

    manifest = json.loads((bundle / "manifest.json").read_text())
    dataset = {"task": "classify", "root": "/data/bach", "split_sizes": {"train": 280, "val": 60, "test": 60},
               "description": "BACH 2018 microscopy"}
    card = model_card(manifest, dataset, {"metric_name": "top1_pct", "val": {"top1_pct": 81.25}, "test": None})
    assert "Synthetic" not in card and "BACH 2018 microscopy" in card and "/data/bach" in card
    assert "validation top1_pct 81.25; test top1_pct n/a" in card


@pytest.mark.parametrize("tamper, message", [
    (lambda b: flip_a_byte(b / "model/onnxruntime-fp32/model.onnx"),
     "model.onnx: SHA-256 differs from the manifest (changed)"),
    (lambda b: (b / "labels.json").unlink(), "labels.json: listed in the manifest but missing"),
    (lambda b: (b / "model" / "notes.txt").write_text("hello"), "notes.txt: not listed in the manifest (an extra file)"),
    (lambda b: (b / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
])
def test_a_tampered_bundle_fails_verification_and_the_runtime_refuses_it(bundle, tmp_path, tamper, message):
    copy = copy_bundle(bundle, tmp_path / "b")
    tamper(copy)
    code, _, err = cli("verify", copy)
    assert code == 1 and message in err
    code, out, _ = cli("verify", copy, "--json")
    assert code == 1 and json.loads(out)["verified"] is False
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    code, err = run_infer_here(copy, image, "--out", tmp_path / "r.csv")
    assert code == 2 and "refusing to run" in err and message in err
    assert not (tmp_path / "r.csv").exists()


def test_package_refuses_what_it_must_not_ship(classify_run, bundle, tmp_path):
    run, _ = classify_run
    failed = copy_bundle(run, tmp_path / "run")
    report = json.loads((failed / "validate" / "report.json").read_text())
    for row in report["rows"]:
        if row["backend"] == "onnxruntime":
            row["status"] = "failed-validation"
    (failed / "validate" / "report.json").write_text(json.dumps(report))
    code, _, err = cli("package", failed, "--device", "cpu", "--out", tmp_path / "b")
    assert code == 2 and "no artifact for runtime onnxruntime-cpu passed validation" in err
    from pathnas.deploy.bundle import PackageInputs, package
    from pathnas.errors import ConfigError
    from pathnas.profiling import HardwareProfile

    torch_gpu = HardwareProfile(name="gpu-torch", description="a GPU through PyTorch", runtime="torch-cuda",
                                precision="fp16", batch_size=1, threads=1, input_sizes=[32])
    layout = RunLayout(run)
    inputs = PackageInputs(layout.root, layout.report, layout.export_record, layout.preprocess, layout.labels)
    with pytest.raises(ConfigError, match="runs without PyTorch"):
        package(inputs, torch_gpu, tmp_path / "b")
    code, _, err = cli("package", run, "--device", "cpu", "--out", bundle)
    assert code == 2 and "already exists" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.zip").exists()


@pytest.mark.parametrize("device, options, files, note", [
    ("x86-cpu-openvino", ["--no-latency"], {"model/openvino-fp32/model.xml", "model/openvino-fp32/model.bin"},
     "not measured (--no-latency)"),
    # TensorRT engines are built on the device: the bundle carries the validated ONNX for that
    ("jetson-orin-nano", [], {"model/onnxruntime-fp32/model.onnx"}, "not measured (this machine cannot run jetson-orin-nano)"),
])
def test_bundles_for_other_runtimes(classify_run, tmp_path, device, options, files, note):
    run, _ = classify_run
    code, out, err = cli("package", run, "--device", device, "--out", tmp_path / "b", "--json", *options)
    assert code == 0, err
    result = json.loads(out)
    assert files == {f for f in result["files"] if f.startswith("model/")} and result["latency_baseline"] is None
    assert note in json.loads((tmp_path / "b" / "manifest.json").read_text())["latency_baseline_note"]


# -- the torch-free runtime -------------------------------------------------------------------

@pytest.mark.parametrize("device, runtime", [("cpu", "onnxruntime"), ("x86-cpu-openvino", "openvino")])
def test_inference_runs_without_torch(classify_run, bundle, tmp_path, device, runtime):
    from pathnas.deploy.footprint import declared_requirements, requirement_closure

    run, data = classify_run
    if device != "cpu":
        assert cli("package", run, "--device", device, "--out", tmp_path / "b", "--no-latency")[0] == 0
    images = sorted((data / "invasive").iterdir())[:3]
    result = infer(bundle if device == "cpu" else tmp_path / "b", *images, data / "normal", "--out", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr
    # Every module it imported comes from the runtime install (pathnas-edge's base + [runtime]).
    allowed = requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}
    imported = imported_distributions(result)
    assert runtime in imported and imported <= allowed, imported - allowed
    assert not {"torch", "timm", "torchvision"} & imported
    rows = read_csv(tmp_path / "r.csv")
    assert len(rows) == 3 + len(list((data / "normal").iterdir())) and all(r["status"] == "ok" for r in rows)
    probs = np.array([[float(r[f"prob_{c}"]) for c in ("benign", "in_situ", "invasive", "normal")] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert all(r["prediction"] == ("benign", "in_situ", "invasive", "normal")[i] for r, i in zip(rows, probs.argmax(1)))


def test_verify_runs_without_torch(bundle):
    from pathnas.deploy.footprint import declared_requirements, requirement_closure

    result = infer("verify", bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK {bundle}")
    assert imported_distributions(result) <= requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}


def test_an_openvino_bundle_on_the_onnxruntime_only_install_names_the_missing_extra(classify_run, tmp_path):
    import os

    run, data = classify_run
    assert cli("package", run, "--device", "x86-cpu-openvino", "--out", tmp_path / "b", "--no-latency")[0] == 0
    image = sorted((data / "invasive").iterdir())[0]
    result = infer(tmp_path / "b", image, "--out", tmp_path / "r.csv", env={**os.environ, "PATHNAS_TEST_BLOCK": "openvino"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "openvino" in errors[0] and "pip install 'pathnas-edge[runtime]'" in errors[0]
    assert not (tmp_path / "r.csv").exists()


def test_inference_matches_the_toolchain_preprocessing_and_model(bundle, classify_run, tmp_path):
    """The runtime's numpy/Pillow preprocessing feeds the model what the torch pipeline validated."""
    import torch
    from torchvision import tv_tensors
    from torchvision.io import read_image

    from pathnas.data import build_transforms
    from pathnas.subnet import load_subnet

    run, data = classify_run
    paths = sorted((data / "normal").iterdir())[:3]
    resized = tmp_path / "resized.png"  # 48 px: resized whole to the 32 px input, like the toolchain does
    Image.open(sorted((data / "benign").iterdir())[0]).convert("RGB").resize((48, 48), Image.BICUBIC).save(resized)
    paths.append(resized)
    code, _ = run_infer_here(bundle, *paths, "--out", tmp_path / "r.json")
    assert code == 0
    got = {r["input"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    got = [got[str(p)] for p in paths]
    model, meta = load_subnet(run / "extract" / "subnet.pt")
    transform = build_transforms("classify", 32, train=False)
    x = torch.stack([transform(tv_tensors.Image(read_image(str(p)))) for p in paths])
    with torch.no_grad():
        expected = model.eval()(x).softmax(1).numpy()
    labels = meta["classes"]
    assert np.allclose([[r[f"prob_{c}"] for c in labels] for r in got], expected, atol=2e-3)


def test_bad_inputs_get_a_line_each_and_the_run_goes_on(bundle, classify_run, tmp_path):
    from pathnas.io import sha256_file

    _, data = classify_run
    good = sorted((data / "benign").iterdir())[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:50])
    not_a_tiff = tmp_path / "broken.tif"
    not_a_tiff.write_bytes(b"II*\x00" + b"\xff" * 40)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 40), 120, np.uint8), "L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((40, 40, 4), 150, np.uint8), "RGBA").save(rgba)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16, 3), 150, np.uint8)).save(small)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "r.csv"
    code, err = run_infer_here(bundle, good, corrupt, not_a_tiff, gray, rgba, small, empty, tmp_path / "missing.png",
                               "--out", out)
    assert code == 1 and "3 input(s) done (0 done before), 5 failed" in err
    assert "corrupt.png: FAILED: " in err and "Traceback" not in err  # a console line each, as they happen
    rows = {Path(r["input"]).name: r for r in read_csv(out)}
    assert len(rows) == 8
    assert rows[good.name]["status"] == "ok" and rows[good.name]["note"] == ""
    assert rows["gray.png"]["status"] == "ok" and rows["gray.png"]["note"] == "grayscale converted to RGB"
    assert rows["rgba.png"]["status"] == "ok" and "alpha composited onto white" in rows["rgba.png"]["note"]
    assert rows["corrupt.png"]["status"] == "error" and "corrupt.png: cannot read image" in rows["corrupt.png"]["error"]
    assert "broken.tif: not a readable TIFF" in rows["broken.tif"]["error"]
    assert "small.png: image is 16x16, smaller than the model input 32x32" in rows["small.png"]["error"]
    assert rows["empty"]["error"] == f"{empty}: folder holds no images"
    assert rows["missing.png"]["error"] == f"{tmp_path / 'missing.png'}: no such file or folder"
    # and a line each in the run's record, which says what ran
    meta = json.loads((out.parent / "run_metadata.json").read_text())
    assert meta["finished"] and meta["inputs"] == 8 and meta["failed"] == 5 and meta["bundle_sha256"] == \
        sha256_file(bundle / "manifest.json") and meta["signature"] == "unsigned" and meta["runtime"] == \
        "CPUExecutionProvider" and meta["versions"]["onnxruntime"]
    assert {Path(r["input"]).name: r["status"] for r in meta["results"]} == {n: r["status"] for n, r in rows.items()}
    assert not [p for p in out.parent.rglob("*.tmp")]  # no temporary files left behind
    strip = tmp_path / "strip.tif"  # too long to decode whole, which --tile never would have to
    tifffile.imwrite(strip, np.full((40, 10_001, 3), 200, np.uint8), photometric="rgb", tile=(32, 1024))
    code, _ = run_infer_here(bundle, strip, "--out", out, "--tile", "never")
    assert code == 1 and "strip.tif: image is 10001x40, too large to resize whole" in read_csv(out)[0]["error"]


def test_tiling_a_large_tiff_streams_with_bounded_memory(bundle, tmp_path):
    """A 4096 x 4096 tiled TIFF (50 MB decoded) is tiled, tissue only, without being decoded whole."""
    import onnxruntime  # noqa: F401  (imported first: code is not the image data measured here)

    import pathnas.deploy.infer  # noqa: F401
    import pathnas.deploy.runners  # noqa: F401

    from bundle_helpers import write_slide

    slide = write_slide(tmp_path / "slide.tif", 4096)  # states no resolution: read at level 0
    tracemalloc.start()
    code, err = run_infer_here(bundle, slide, "--out", tmp_path / "r.csv", "--batch-size", "64")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 0, err
    assert "slide.tif: the image states no resolution: read at level 0" in err
    decoded = 4096 * 4096 * 3
    assert peak < decoded / 4, f"peak {peak / 1e6:.1f} MB against {decoded / 1e6:.0f} MB decoded"
    row = read_csv(tmp_path / "r.csv")[0]
    assert int(row["tiles"]) == 171 * 171  # 32 px tiles, stride 24 (25% overlap), plus one flush with the edge
    assert 0.24 < int(row["tissue_tiles"]) / int(row["tiles"]) < 0.27
    tiles = read_csv(Path(row["tile_csv"]))
    assert len(tiles) == int(row["tissue_tiles"]) and all(int(t["x"]) + 32 <= 1024 + 24 for t in tiles)
    heatmap = np.asarray(Image.open(row["heatmap"]))
    assert heatmap.shape == (512, 512, 3)
    tinted, glass = heatmap[:, :100].astype(int), heatmap[:, 300:].astype(int)
    assert (tinted[..., 0] - tinted[..., 1]).mean() > 60 and np.abs(glass - 250).max() <= 1  # only tissue is scored


def test_segmentation_bundle_writes_masks(tmp_path):
    run, data = make_validated_run(tmp_path, "segment")
    assert cli("package", run, "--device", "cpu", "--out", tmp_path / "b", "--no-latency")[0] == 0
    image = sorted((data / "images").iterdir())[0]
    twin = tmp_path / "twin" / image.name  # the same file name in another folder gets its own mask
    twin.parent.mkdir()
    shutil.copy(image, twin)
    large = tmp_path / "large.png"  # 3 x 3 tiles of 40 px (each resized to the 32 px input), with overlap
    Image.open(image).convert("RGB").resize((80, 80)).save(large)
    result = infer(tmp_path / "b", image, twin, large, "--out", tmp_path / "r.csv", "--mask-dir", tmp_path / "masks",
                   "--min-tissue", "0", "--tile-size", "40", "--tile", "always")
    assert result.returncode == 0, result.stderr
    rows = {r["input"]: r for r in read_csv(tmp_path / "r.csv")}
    masks = {rows[str(p)]["mask"] for p in (image, twin)}
    assert len(masks) == 2 and all(Path(m).exists() for m in masks)  # one each, named by stem and path hash
    rows = {Path(r["input"]).name if r["input"] != str(twin) else "twin": r for r in rows.values()}
    mask = np.asarray(Image.open(rows[image.name]["mask"]))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}
    assert float(rows[image.name]["foreground_pct"]) == pytest.approx(100 * (mask > 0).mean(), abs=1e-3)
    assert rows["large.png"]["tiles"] == "9" and Path(rows["large.png"]["mask"]).exists()
    assert np.asarray(Image.open(rows["large.png"]["mask"])).shape == (80, 80)  # at full size: 80 px < --heatmap-size
    # the slide-level answer of a segmentation: each mask class's area (unknown: a PNG states no µm/px) and share
    from pathnas.deploy.images import tissue_mask

    foreground = json.loads((tmp_path / "b" / "labels.json").read_text())[1]
    tissue = int(tissue_mask(np.asarray(Image.open(large))).sum())
    drawn = int((np.asarray(Image.open(rows["large.png"]["mask"])) == 1).sum())
    assert rows["large.png"][f"area_mm2_{foreground}"] == rows["large.png"]["tissue_mm2"] == "unknown"
    assert float(rows["large.png"][f"share_{foreground}"]) == pytest.approx(drawn / tissue if tissue else 0, abs=1e-5)
    # QuPath's GeoJSON: the mask's foreground class as polygons in level-0 pixels, exactly the mask's area
    from pathnas.deploy.geojson import signed_area

    for name in (image.name, "large.png"):
        mask = np.asarray(Image.open(rows[name]["mask"]))
        geo = json.loads(Path(rows[name]["geojson"]).read_text())
        assert geo["type"] == "FeatureCollection"
        labels = json.loads((tmp_path / "b" / "labels.json").read_text())
        by_class = {f["properties"]["classification"]["name"]: f for f in geo["features"]}
        assert set(by_class) == {labels[i] for i in np.unique(mask) if i != 0}  # background is not drawn
        for index, label in enumerate(labels[1:], 1):
            if label in by_class:
                polygons = by_class[label]["geometry"]["coordinates"]
                area = sum(signed_area(ring[:-1]) for polygon in polygons for ring in polygon)
                assert area == pytest.approx(float((mask == index).sum()))  # mask pixels are level-0 pixels here


@pytest.mark.parametrize("layout", [dict(tile=(64, 64), compression="zlib"), dict(rowsperstrip=7),
                                    dict(tile=(48, 32), gray16=True)])
def test_tiff_regions_are_read_exactly_and_in_pieces(tmp_path, layout):
    """Regions of tiled and stripped TIFFs (RGB, 16-bit gray) equal the same crop of the decoded image."""
    from pathnas.deploy.images import open_image, tile_grid, to_rgb

    rng = np.random.default_rng(0)
    gray16 = layout.pop("gray16", False)
    image = rng.integers(0, 65535, (150, 200), dtype=np.uint16) if gray16 else rng.integers(0, 255, (150, 200, 3), np.uint8)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, image, photometric="minisblack" if gray16 else "rgb", **layout)
    expected = to_rgb(image)
    reader = open_image(path)
    assert (reader.height, reader.width) == (150, 200) and reader.note == ("grayscale converted to RGB" if gray16 else "")
    grid = list(tile_grid(150, 200, 40, 0.3, reader.block))
    assert sorted(grid) == sorted(tile_grid(150, 200, 40, 0.3))  # the block order visits every tile once
    for y, x in grid:
        assert np.array_equal(reader.read_region(y, x, 40, 40), expected[y:y + 40, x:x + 40]), (y, x)
    assert len(reader.reader(0)._cache) <= 16  # only a few decoded segments are ever held
    reader.close()


# -- the pipeline's last stages ---------------------------------------------------------------------

def test_stage_package_and_smoke_test(classify_run, tmp_path, monkeypatch):
    """RUN/bundle is packaged, verified and run torch-free on validation images, whose outputs equal PyTorch's;
    a re-run with the same inputs is skipped; changed inputs replace the bundle in place."""
    from pathnas.pipeline.stages import SmokeTestError, stage_package, stage_smoke_test
    from pathnas.profiling import load_profile

    run, data = classify_run
    run = shutil.copytree(run, tmp_path / "run")
    layout = RunLayout(run)
    bundle = stage_package(layout, load_profile("cpu"), measure_latency=False)
    assert bundle == layout.bundle and (run / "bundle.zip").exists()
    record = stage_smoke_test(layout, data, images=3)
    assert record["passed"] and record["top1_agreement"] == 1.0 and record["max_abs_prob_diff"] < 1e-3
    val = json.loads((data / "splits.json").read_text())["val"]
    assert [Path(p).relative_to(data).as_posix() for p in record["images"]] == val[:3]
    assert record["workstation_commands"][0] == "pathnas-infer verify bundle"
    assert json.loads(layout.smoke_test.read_text()) == record
    first = (bundle / "manifest.json").read_bytes()
    stage_package(layout, load_profile("cpu"), measure_latency=False)  # up to date: skipped
    assert (bundle / "manifest.json").read_bytes() == first
    stage_package(layout, load_profile("x86-cpu-openvino"), measure_latency=False)  # another profile: replaced
    assert "model/openvino-fp32/model.xml" in json.loads((bundle / "manifest.json").read_text())["files"]
    from pathnas.pipeline import stages

    monkeypatch.setattr(stages, "SMOKE_PROB_ATOL", -1.0)  # nothing can be close enough: the failure path
    with pytest.raises(SmokeTestError, match="outputs differ from the PyTorch model's"):
        stage_smoke_test(layout, data, images=2, force=True)
    assert json.loads(layout.smoke_test.read_text())["passed"] is False
