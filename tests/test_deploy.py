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

    from pathnas.deploy.synthetic import write_slide

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


def test_regress_a_bundle_on_the_workstation_without_changing_it(bundle, tmp_path):
    """--update-baseline writes the workstation's own baseline beside the bundle (the signed manifest keeps
    the packager's), and a check uses it only when given --baseline. Only the plumbing is asserted here:
    whether a real timing passes depends on the machine (the decision is tested on given samples below)."""
    from pathnas.deploy.footprint import declared_requirements, requirement_closure
    from pathnas.deploy.manifest import verify

    copy = copy_bundle(bundle, tmp_path / "b")
    before = (copy / "manifest.json").read_bytes()
    measured = torch_free("pathnas.deploy.toolkit", "regress", copy, "--update-baseline", "--rounds", "1")
    assert measured.returncode == 0, measured.stderr
    own = tmp_path / "b.baseline.json"
    assert f"baseline written to {own}" in measured.stdout
    assert (copy / "manifest.json").read_bytes() == before and verify(copy).manifest  # the bundle is untouched
    baseline = json.loads(own.read_text())
    assert baseline["schema"] == "pathnas-latency-baseline/2" and baseline["bundle"] == "b"
    assert len(baseline["samples_ms"]) == len(baseline["reference_samples_ms"]) == 20
    # marked so that its use shows: 7x every sample (the ratios the verdict uses stay as measured)
    own.write_text(json.dumps({**baseline, **{k: [7 * v for v in baseline[k]]
                                              for k in ("samples_ms", "reference_samples_ms")}}))
    checked = torch_free("pathnas.deploy.toolkit", "regress", copy, "--baseline", own, "--rounds", "1", "--json",
                         "--junit", tmp_path / "j.xml")
    assert checked.returncode in (0, 1), checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["method"] == "reference" and checked.returncode == (0 if verdict["passed"] else 1)
    assert verdict["baseline_median_ms"] == pytest.approx(7 * baseline["median_ms"], rel=1e-3)  # --baseline honoured
    assert 'tests="1"' in (tmp_path / "j.xml").read_text()
    allowed = requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}
    assert imported_distributions(checked) <= allowed, imported_distributions(checked) - allowed


@pytest.fixture()
def fake_timing(monkeypatch):
    """Replace the timing of model + reference with given samples: the CLI's decisions without a clock."""
    from pathnas.deploy import regress

    rng = np.random.default_rng(0)
    machine = rng.normal(1.0, 0.03, 100)  # the machine's speed, shared by the pair taken together
    base_model, base_ref = machine * rng.normal(2.0, 0.02, 100), machine * rng.normal(0.5, 0.005, 100)
    now = {"model": 1.0, "reference": 1.0}

    def measure(path, reference, profile, rounds=5, repeats=20):
        return list(base_model * now["model"]), list(base_ref * now["reference"])

    monkeypatch.setattr(regress, "measure_with_reference", measure)
    baseline = {"samples_ms": list(base_model), "reference_samples_ms": list(base_ref)}
    return now, baseline


def _junit_error(path: Path) -> str:
    import xml.etree.ElementTree as ET

    return ET.parse(path).getroot().find("testcase/error").text


def _with_baseline(copy: Path, samples: dict) -> None:
    def edit(manifest):
        manifest["latency_baseline"].update(samples)

    from bundle_helpers import rehash

    rehash(copy, edit)


@pytest.mark.parametrize("model, machine, code, word", [(1.0, 1.0, 0, "passed"), (1.5, 1.5, 0, "passed"),
                                                        (1.2, 1.0, 1, "REGRESSED"), (1.2 * 0.7, 0.7, 1, "REGRESSED")])
def test_regress_verdicts_through_both_clis(bundle, tmp_path, fake_timing, model, machine, code, word):
    """A machine 1.5x slower than at packaging passes; the model itself 20% slower fails, on a fast machine too."""
    now, samples = fake_timing
    copy = copy_bundle(bundle, tmp_path / "b")
    _with_baseline(copy, samples)
    now.update(model=model, reference=machine)
    junit = tmp_path / "j.xml"
    got, out, err = run_infer_capture("regress", copy, "--junit", junit)
    assert got == code and out.startswith(word), err
    assert f"reference model at {machine:.2f}x its baseline time" in out
    assert ('failures="1"' in junit.read_text()) == (code == 1)
    got, out, _ = cli("regress", copy, "--json")
    assert got == code and json.loads(out)["passed"] is (code == 0)


def test_regress_refuses_and_reports_what_it_cannot_check(bundle, tmp_path, fake_timing):
    """Every way a check cannot run leaves a JUnit error report and exits 2; nothing outside the bundle is timed."""
    copy = copy_bundle(bundle, tmp_path / "b")
    other = tmp_path / "other.json"  # a baseline of another model
    other.write_text(json.dumps({**json.loads((copy / "manifest.json").read_text())["latency_baseline"],
                                 "model_sha256": "0" * 64}))
    outside = tmp_path / "evil" / "other.onnx"
    outside.parent.mkdir()
    shutil.copy(copy / "model/onnxruntime-fp32/model.onnx", outside)

    def aim_outside(manifest):
        manifest["model"]["default"] = "../evil/other.onnx"

    cases = [
        (["--baseline", other], "was measured for another model"),
        (["--baseline", tmp_path / "missing.json"], "missing.json does not exist"),
        (["--tolerance", "-1"], "--tolerance must be >= 0"),
    ]
    for args, message in cases:
        junit = tmp_path / "j.xml"
        junit.unlink(missing_ok=True)
        code, _, err = run_infer_capture("regress", copy, *args, "--junit", junit)
        assert code == 2 and message in err, err
        assert 'errors="1"' in junit.read_text() and message in _junit_error(junit)
    from bundle_helpers import rehash

    rehash(copy, aim_outside)
    for run in (lambda *a: run_infer_capture("regress", copy, *a)[::2], lambda *a: cli("regress", copy, *a)[::2]):
        junit = tmp_path / "j.xml"
        junit.unlink(missing_ok=True)
        code, err = run("--junit", junit)
        assert code == 2 and "model.default '../evil/other.onnx'" in err  # not timed, not "passed"
        assert 'errors="1"' in junit.read_text()
    flip_a_byte(copy / "model/onnxruntime-fp32/model.onnx")
    code, _, err = cli("regress", copy)
    assert code == 2 and "model.onnx: SHA-256 differs" in err  # a tampered bundle is not timed either


def test_regress_of_a_model_file_uses_the_reference_too(classify_run, tmp_path):
    """pathnas-edge regress MODEL.onnx: the baseline times the same fixed reference model bundles carry."""
    from pathnas.pipeline.reference_model import reference_model_bytes
    import hashlib

    run, _ = classify_run
    baseline = tmp_path / "baseline.json"
    code, _, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--update-baseline",
                       "--rounds", "1")
    assert code == 0, err
    data = json.loads(baseline.read_text())
    assert data["reference_sha256"] == hashlib.sha256(reference_model_bytes()).hexdigest()
    assert len(data["reference_samples_ms"]) == len(data["samples_ms"]) == 20
    code, out, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--rounds", "1", "--json")
    assert code in (0, 1) and json.loads(out)["method"] == "reference", err
    data["reference_sha256"] = "0" * 64
    baseline.write_text(json.dumps(data))
    junit = tmp_path / "j.xml"
    code, _, err = cli("regress", run / "export" / "model.onnx", "--baseline", baseline, "--junit", junit)
    assert code == 2 and "timed another reference model" in err and 'errors="1"' in junit.read_text()


# -- the regression decision, on given samples ----------------------------------------------------------

def _samples(seed: int, n: int = 100, drift: float = 0.0):
    """Model and reference samples as interleaved timing gives them: each pair shares the machine's speed
    of that moment (here drifting by ``drift`` over the run), each has its own small noise."""
    rng = np.random.default_rng(seed)
    machine = rng.normal(1.0, 0.05, n) * np.linspace(1.0, 1.0 + drift, n)
    return machine * rng.normal(2.0, 0.04, n), machine * rng.normal(0.4, 0.008, n)


def test_a_uniformly_slower_machine_is_not_a_regression_but_a_slower_model_is():
    from pathnas.deploy.regress import compare, compare_normalized

    base_model, base_ref = _samples(0)
    cur_model, cur_ref = _samples(1)
    same = compare_normalized(cur_model, cur_ref, base_model, base_ref)
    assert same.passed and same.ratio == pytest.approx(1.0, abs=0.03) and same.method == "reference"
    slower_machine = compare_normalized(cur_model * 1.5, cur_ref * 1.5, base_model, base_ref)
    assert slower_machine.passed and slower_machine.machine_ratio == pytest.approx(1.5, rel=0.05)
    assert not compare(cur_model * 1.5, base_model).passed  # what the absolute check said: a false alarm
    slower_model = compare_normalized(cur_model * 1.2, cur_ref, base_model, base_ref)
    assert not slower_model.passed and slower_model.ci_low > 1.1 and slower_model.ratio == pytest.approx(1.2, rel=0.03)
    both = compare_normalized(cur_model * 1.2 * 0.6, cur_ref * 0.6, base_model, base_ref)  # on a faster machine
    assert not both.passed
    within = compare_normalized(cur_model * 1.05, cur_ref, base_model, base_ref)  # inside the 10% tolerance
    assert within.passed
    drifting = compare_normalized(*_samples(2, drift=0.4), base_model, base_ref)  # 40% slower by the run's end
    assert drifting.passed and "reference model at" in drifting.summary()
    with pytest.raises(ValueError, match="one sample each per timing pair"):
        compare_normalized(cur_model[:50], cur_ref, base_model, base_ref)


def test_judging_by_rounds_holds_the_speed_of_each_runtime_session():
    """Each round runs in fresh sessions, and a session has a speed of its own (here +-4%, the model's and the
    reference's apart): judged by rounds, that spread widens the interval instead of raising false alarms."""
    from pathnas.deploy.regress import compare_normalized

    def rounds(seed: int, sessions_sd: float = 0.04, k: int = 10):
        rng = np.random.default_rng(seed)
        model, ref = _samples(seed, n=20 * k)
        own = np.repeat(rng.normal(1.0, sessions_sd, k), 20)  # the model's session, slower or faster than usual
        return model * own, ref

    base = rounds(0)
    verdicts = [compare_normalized(*rounds(seed), *base, round_size=20) for seed in range(1, 21)]
    assert all(v.passed for v in verdicts)
    assert all(not compare_normalized(m * 1.2, r, *base, round_size=20).passed for m, r in map(rounds, range(1, 21)))
    pooled = compare_normalized(*rounds(1), *base)  # the pairs alone do not see the sessions' spread
    by_rounds = compare_normalized(*rounds(1), *base, round_size=20)
    assert by_rounds.ci_high - by_rounds.ci_low > pooled.ci_high - pooled.ci_low
    # too few rounds to judge by: the pooled pairs decide
    assert compare_normalized(*rounds(1, k=2), *base, round_size=20).ci_low == pytest.approx(
        compare_normalized(*rounds(1, k=2), *base).ci_low)


def test_baselines_are_checked_before_they_are_trusted():
    from pathnas.deploy.regress import RunSettings, check_baseline

    profile = RunSettings("x86-cpu-ort", "onnxruntime-cpu", "fp32", 2)
    good = {"schema": "pathnas-latency-baseline/2", "device": "x86-cpu-ort", "runtime": "onnxruntime-cpu",
            "threads": 2, "batch_size": 1, "samples_ms": [1.0] * 5, "reference_samples_ms": [0.5] * 5}
    check_baseline(good, profile)
    check_baseline({**good, "schema": "pathnas-latency-baseline/1", "reference_samples_ms": None}, profile)
    with pytest.raises(ValueError, match="one positive latency"):
        check_baseline({**good, "reference_samples_ms": [0.5] * 4}, profile)
    with pytest.raises(ValueError, match="samples_ms must list at least 5"):
        check_baseline({**good, "samples_ms": [1.0, True, 1.0, 1.0, 1.0]}, profile)


def test_junit_is_written_for_any_failure_of_the_check(tmp_path):
    from pathnas.deploy.regress import junit_on_error

    junit = tmp_path / "j.xml"
    with pytest.raises(RuntimeError), junit_on_error(junit, "model"):
        raise RuntimeError("the runtime crashed")
    assert 'errors="1"' in junit.read_text() and "RuntimeError: the runtime crashed" in junit.read_text()


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
