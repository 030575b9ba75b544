"""Bundles (package, verify, tamper, latency regression) and the torch-free workstation runtime
(pathnas-infer: imports, preprocessing, bad inputs, streamed slide tiling, segmentation)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathnas.data import generate
from pathnas.pipeline import RunLayout
from pathnas.pipeline.stages import stage_export, stage_extract, stage_validate
from pathnas.spaces import space_config
from pathnas.train import PretrainConfig, pretrain

SPACES = {
    "classify": ("shufflenet", dict(width_mult=0.5, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1)), "3575"),
    "segment": ("unet", dict(width_mult=0.25, input_size=32, num_classes=2), "33333333"),
}


def cli(*args) -> tuple[int, str, str]:
    """`pathnas-edge ARGS` in this process (a subprocess would re-import torch for every call)."""
    from pathnas.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["pathnas-edge", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    # rich wraps long lines at 80 columns when writing to a file
    return exit_info.value.code, out.getvalue(), err.getvalue().replace("\n", "")


def make_validated_run(root: Path, task: str, formats: tuple[str, ...] = ("onnx",)) -> tuple[Path, Path]:
    """A real run directory: tiny supernet, extracted subnet, exported and validated artifacts."""
    data = root / "data"
    generate(data, task, n_per_class=8 if task == "classify" else 4, image_size=32, seed=0)
    name, knobs, arch = SPACES[task]
    run = root / "run"
    pretrain(space_config(name, **knobs), PretrainConfig(data=data, run_dir=run / "supernet", epochs=1, batch_size=8,
                                                         workers=0, eval_paths=0, device="cpu", mixup_alpha=0,
                                                         cutmix_alpha=0), progress=False)
    stage_extract(RunLayout(run), run / "supernet" / "last.pt", arch)
    stage_export(RunLayout(run), data, list(formats), ["fp32"])
    assert stage_validate(RunLayout(run), data)["passed"]
    return run, data


@pytest.fixture(scope="session")
def classify_run(tmp_path_factory):
    return make_validated_run(tmp_path_factory.mktemp("deploy"), "classify", ("onnx", "openvino"))


@pytest.fixture(scope="session")
def bundle(classify_run, tmp_path_factory):
    """An onnxruntime bundle for this CPU, with a latency baseline measured here."""
    run, _ = classify_run
    out = tmp_path_factory.mktemp("bundles") / "cpu-bundle"
    code, _, err = cli("package", run, "--device", "cpu", "--out", out)
    assert code == 0, err
    return out


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def test_package_writes_a_self_contained_verified_bundle(bundle):
    from pathnas.io import sha256_file

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == {"preprocess.json", "labels.json", "MODEL_CARD.md",
                                      "model/onnxruntime-fp32/model.onnx"}  # no OpenVINO IR in an ORT bundle
    assert all(sha256_file(bundle / name) == digest for name, digest in manifest["files"].items())
    assert manifest["architecture"] == "3575" and manifest["profile"]["name"] == "x86-cpu-ort"
    assert manifest["classes"] == json.loads((bundle / "labels.json").read_text())
    baseline = manifest["latency_baseline"]
    assert baseline["device"] == "x86-cpu-ort" and len(baseline["samples_ms"]) >= 5 and baseline["median_ms"] > 0
    assert [r["status"] for r in manifest["validation"]["rows"]] == ["passed"]
    assert "onnxruntime" in manifest["versions"]["validated_with"] and manifest["dataset"]["split_sizes"]
    assert {"numpy", "pillow", "tifffile", "onnxruntime", "openvino"} <= set(manifest["versions"]["packaged_with"])
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Intended use" in card and "**Synthetic data**" in card and "## Limitations" in card
    assert "**Not retrained**" in card
    assert f"median {baseline['median_ms']:.3f} ms" in card
    import zipfile

    with zipfile.ZipFile(f"{bundle}.zip") as archive:
        files = [name for name in archive.namelist() if not name.endswith("/")]
    assert sorted(files) == sorted([*manifest["files"], "manifest.json"])
    code, out, _ = cli("verify", bundle)
    assert code == 0 and "every file matches" in out
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_model_card_for_a_retrained_model_on_real_data(bundle):
    from pathnas.deploy.bundle import model_card

    manifest = json.loads((bundle / "manifest.json").read_text())
    dataset = {"task": "classify", "root": "/data/bach", "split_sizes": {"train": 280, "val": 60, "test": 60},
               "description": "BACH 2018 microscopy"}
    card = model_card(manifest, dataset, {"metric_name": "top1_pct", "val": {"top1_pct": 81.25}, "test": None})
    assert "Synthetic" not in card and "BACH 2018 microscopy" in card and "/data/bach" in card
    assert "validation top1_pct 81.25; test top1_pct n/a" in card


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper, message", [
    (lambda b: _flip_a_byte(b / "model/onnxruntime-fp32/model.onnx"),
     "model.onnx: SHA-256 differs from the manifest (changed)"),
    (lambda b: (b / "labels.json").unlink(), "labels.json: listed in the manifest but missing"),
    (lambda b: (b / "model" / "notes.txt").write_text("hello"), "notes.txt: not listed in the manifest (an extra file)"),
    (lambda b: (b / "manifest.json").write_text("{"), "manifest.json: not valid JSON"),
])
def test_a_tampered_bundle_fails_verification_and_the_runtime_refuses_it(bundle, tmp_path, tamper, message):
    from pathnas.deploy import toolkit

    copy = copy_bundle(bundle, tmp_path / "b")
    tamper(copy)
    code, _, err = cli("verify", copy)
    assert code == 1 and message in err
    code, out, _ = cli("verify", copy, "--json")
    assert code == 1 and json.loads(out)["verified"] is False
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as refused:
        toolkit.main([str(copy), str(image), "--out", str(tmp_path / "r.csv")])
    assert refused.value.code == 2 and "refusing to run" in stderr.getvalue() and message in stderr.getvalue()
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

# Runs a module's main (pathnas-infer, pathnas-regress) with torch, timm and the training code made
# unimportable, then prints the distributions of every third-party module the run imported.
BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, json, runpy, sys
    BLOCKED = ("torch", "torchvision", "timm", "fvcore", "pathnas.train", "pathnas.spaces", "pathnas.search",
               "pathnas.data", "pathnas.cli")
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Blocker())
    before = set(sys.modules)
    module, sys.argv = sys.argv[1], sys.argv[1:]
    try:
        runpy.run_module(module, run_name="__main__")
    finally:
        import sysconfig
        from pathnas.deploy.footprint import module_distributions
        owners = module_distributions()
        import os, pathnas
        checkout = os.path.dirname(os.path.dirname(pathnas.__file__))  # an editable install's source
        installed = (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), checkout)
        roots = {m.split(".")[0] for m in set(sys.modules) - before}
        # modules loaded from installed files (not the standard library, nor the synthetic
        # modules compiled extensions register, such as cython_runtime)
        files = {r: getattr(sys.modules.get(r), "__file__", None) or "" for r in roots}
        third_party = sorted(r for r, f in files.items() if f.startswith(installed))
        print("IMPORTED:" + json.dumps({r: sorted(owners.get(r, ["?"])) for r in third_party}), file=sys.stderr)
""")


def torch_free(module: str, *args) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a fresh process where torch and the training code cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, module, *map(str, args)], capture_output=True, text=True)


def infer(*args) -> subprocess.CompletedProcess:
    return torch_free("pathnas.deploy.toolkit", *args)


def imported_distributions(result: subprocess.CompletedProcess) -> set[str]:
    line = next(l for l in result.stderr.splitlines() if l.startswith("IMPORTED:"))
    return {d for dists in json.loads(line[len("IMPORTED:"):]).values() for d in dists}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_infer_here(*args) -> tuple[int, str]:
    """pathnas-infer in this process (for tracemalloc, and to save a process start)."""
    from pathnas.deploy import toolkit

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        toolkit.main([str(a) for a in args])
    return exit_info.value.code, err.getvalue()


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
    assert code == 1 and "3 input(s) done, 5 failed" in err
    rows = {Path(r["input"]).name: r for r in read_csv(out)}
    assert len(rows) == 8
    assert rows[good.name]["status"] == "ok" and rows[good.name]["note"] == ""
    assert rows["gray.png"]["status"] == "ok" and rows["gray.png"]["note"] == "grayscale converted to RGB"
    assert rows["rgba.png"]["status"] == "ok" and "alpha composited onto white" in rows["rgba.png"]["note"]
    assert rows["corrupt.png"]["status"] == "error" and "corrupt.png: cannot read image" in rows["corrupt.png"]["error"]
    assert "broken.tif: not a readable TIFF" in rows["broken.tif"]["error"]
    assert "small.png: image is 16x16, smaller than the model input 32x32" in rows["small.png"]["error"]
    assert rows["empty"]["error"] == "folder holds no images"
    assert rows["missing.png"]["error"] == "no such file or folder"
    assert [p.name for p in out.parent.iterdir()] == ["r.csv"]  # no temporary files left behind
    strip = tmp_path / "strip.tif"  # too long to decode whole, which --tile never would have to
    tifffile.imwrite(strip, np.full((40, 10_001, 3), 200, np.uint8), photometric="rgb", tile=(32, 1024))
    code, _ = run_infer_here(bundle, strip, "--out", out, "--tile", "never")
    assert code == 1 and "strip.tif: image is 10001x40, too large to resize whole" in read_csv(out)[0]["error"]


def _synthetic_slide(path: Path, side: int, tile: int = 256) -> None:
    """A tiled RGB TIFF, written tile by tile: the left quarter is H&E-pink tissue, the rest glass."""
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([230, 150, 200], 12, (tile, tile, 3)), 0, 255).astype(np.uint8)
    white = np.full((tile, tile, 3), 250, np.uint8)
    n = side // tile
    tifffile.imwrite(path, (pink if tx < n // 4 else white for _ in range(n) for tx in range(n)),
                     shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")


def test_tiling_a_large_tiff_streams_with_bounded_memory(bundle, tmp_path):
    """A 4096 x 4096 tiled TIFF (50 MB decoded) is tiled, tissue only, without being decoded whole."""
    import onnxruntime  # noqa: F401  (imported first: code is not the image data measured here)

    import pathnas.deploy.infer  # noqa: F401
    import pathnas.deploy.runners  # noqa: F401

    slide = tmp_path / "slide.tif"
    _synthetic_slide(slide, 4096)
    tracemalloc.start()
    code, err = run_infer_here(bundle, slide, "--out", tmp_path / "r.csv", "--batch-size", "64")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 0, err
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
    rows = {Path(r["input"]).name: r for r in read_csv(tmp_path / "r.csv")}
    assert (tmp_path / "masks" / f"{image.stem}-2_mask.png").exists()
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{image.stem}_mask.png"))
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
    assert len(reader._cache) <= 8  # only a few decoded segments are ever held
    reader.close()


def test_regress_a_bundle_against_its_manifest_baseline(bundle, tmp_path):
    from pathnas.deploy.footprint import declared_requirements, requirement_closure
    from pathnas.deploy.manifest import verify

    copy = copy_bundle(bundle, tmp_path / "b")
    # On the workstation, without PyTorch: re-measure the baseline, then check against it.
    measured = torch_free("pathnas.deploy.toolkit", "regress", copy, "--update-baseline", "--rounds", "2")
    assert measured.returncode == 0, measured.stderr
    assert verify(copy)["latency_baseline"]["samples_ms"] != json.loads((bundle / "manifest.json").read_text())[
        "latency_baseline"]["samples_ms"]  # rewritten, and the bundle still verifies
    checked = torch_free("pathnas.deploy.toolkit", "regress", copy, "--tolerance", "1.0", "--rounds", "2", "--json")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["passed"] is True
    allowed = requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}
    assert imported_distributions(checked) <= allowed, imported_distributions(checked) - allowed
    # The same check through pathnas-edge; a baseline 3x faster than now is a regression.
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["latency_baseline"]["samples_ms"] = [s * 0.3 for s in manifest["latency_baseline"]["samples_ms"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = cli("regress", copy, "--rounds", "2")
    assert code == 1 and "REGRESSED" in out
    _flip_a_byte(copy / "model/onnxruntime-fp32/model.onnx")
    code, _, err = cli("regress", copy, "--rounds", "2")
    assert code == 2 and "model.onnx: SHA-256 differs" in err  # a tampered bundle is not timed either
