"""Bundles: package, verify, tamper; torch-free inference; streamed tiling; bad inputs; bundle regress."""
from __future__ import annotations

import csv
import json
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
from pathnas.pipeline import stage_export, stage_extract, stage_validate
from pathnas.spaces import space_config
from pathnas.train import PretrainConfig, pretrain

CLI = [sys.executable, "-m", "pathnas.cli"]
# Runs pathnas-infer with torch, timm and the training code made unimportable, then reports
# which of them got imported anyway (none may be).
BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, runpy, sys
    BLOCKED = ("torch", "torchvision", "timm", "fvcore", "pathnas.train", "pathnas.spaces", "pathnas.search")
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Blocker())
    sys.argv = ["pathnas-infer"] + sys.argv[1:]
    try:
        runpy.run_module("pathnas.deploy.infer", run_name="__main__")
    except SystemExit as exit:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))
        print("LOADED:" + ",".join(loaded), file=sys.stderr)
        raise
""")


def make_validated_run(root: Path, task: str) -> tuple[Path, Path]:
    data = root / "data"
    generate(data, task, n_per_class=8 if task == "classify" else 4, image_size=32, seed=0)
    name, knobs, arch = (("shufflenet", dict(width_mult=0.5, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1)),
                          "3575") if task == "classify"
                         else ("unet", dict(width_mult=0.25, input_size=32, num_classes=2), "33333333"))
    run = root / "run"
    pretrain(space_config(name, **knobs), PretrainConfig(data=data, run_dir=run / "supernet", epochs=1, batch_size=8,
                                                         workers=0, eval_paths=0, device="cpu", mixup_alpha=0,
                                                         cutmix_alpha=0), progress=False)
    stage_extract(run, run / "supernet" / "last.pt", arch)
    stage_export(run, data, ["onnx", "openvino"], ["fp32"])
    assert stage_validate(run, data)["passed"]
    return run, data


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    return make_validated_run(tmp_path_factory.mktemp("deploy"), "classify")


@pytest.fixture(scope="module")
def bundle(classify_run, tmp_path_factory):
    run, _ = classify_run
    out = tmp_path_factory.mktemp("bundles") / "cpu-bundle"
    result = subprocess.run([*CLI, "package", str(run), "--device", "cpu", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def copy_bundle(bundle: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(bundle, dest)
    return dest


def infer(*args, blocked: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", BLOCKED_RUN] if blocked else [sys.executable, "-m", "pathnas.deploy.infer"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- package and verify ------------------------------------------------------------------------

def test_package_writes_a_self_contained_verified_bundle(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {"preprocess.json", "labels.json", "MODEL_CARD.md", "model/onnxruntime-fp32/model.onnx"} <= set(manifest["files"])
    assert manifest["architecture"] == "3575" and manifest["profile"]["name"] == "x86-cpu-ort"
    assert manifest["latency_baseline"]["device"] == "x86-cpu-ort" and manifest["latency_baseline"]["samples_ms"]
    assert manifest["validation"]["passed"][0]["status"] == "passed" and manifest["versions"]["onnxruntime"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Intended use" in card and "Synthetic data" in card and "## Limitations" in card
    assert bundle.with_suffix(".zip").stat().st_size > 1000
    ok = subprocess.run([*CLI, "verify", str(bundle)], capture_output=True, text=True)
    assert ok.returncode == 0 and "every file matches" in ok.stdout


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / "model/onnxruntime-fp32/model.onnx").write_bytes(
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])((b / "model/onnxruntime-fp32/model.onnx").read_bytes())),
     "model.onnx: SHA-256 differs from the manifest (changed)"),
    (lambda b: (b / "labels.json").unlink(), "labels.json: listed in the manifest but missing"),
    (lambda b: (b / "notes.txt").write_text("hello"), "notes.txt: not listed in the manifest (an extra file)"),
])
def test_a_tampered_bundle_fails_verification_and_the_runtime_refuses_it(bundle, tmp_path, tamper, message):
    copy = copy_bundle(bundle, tmp_path / "b")
    tamper(copy)
    result = subprocess.run([*CLI, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 1 and message in result.stderr.replace("\n", "")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    refused = infer(copy, image, "--out", tmp_path / "r.csv")
    assert refused.returncode == 2 and "refusing to run" in refused.stderr and not (tmp_path / "r.csv").exists()


def test_package_refuses_a_run_that_did_not_pass_validation(classify_run, tmp_path):
    import shutil

    run, _ = classify_run
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    report = json.loads((bad / "validate" / "report.json").read_text())
    for row in report["rows"]:
        if row["backend"] == "onnxruntime":
            row["status"] = "failed-validation"
    (bad / "validate" / "report.json").write_text(json.dumps(report))
    result = subprocess.run([*CLI, "package", str(bad), "--device", "cpu", "--out", str(tmp_path / "b")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no artifact for runtime onnxruntime-cpu passed validation" in result.stderr
    assert not (tmp_path / "b").exists()


# -- torch-free inference ----------------------------------------------------------------------

def test_inference_runs_without_torch(bundle, classify_run, tmp_path):
    _, data = classify_run
    images = sorted((data / "invasive").iterdir())[:3]
    result = infer(bundle, *images, "--out", tmp_path / "r.csv", blocked=True)
    assert result.returncode == 0, result.stderr
    assert "LOADED:\n" in result.stderr or result.stderr.rstrip().endswith("LOADED:")
    rows = read_csv(tmp_path / "r.csv")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    probs = [[float(r[f"prob_{c}"]) for c in ("benign", "in_situ", "invasive", "normal")] for r in rows]
    assert np.allclose(np.sum(probs, axis=1), 1.0, atol=1e-4)


def test_inference_matches_the_validated_onnx_model(bundle, classify_run, tmp_path):
    """The runtime's own preprocessing gives the predictions of the toolchain's pipeline."""
    import torch

    from pathnas.data import build_transforms
    from pathnas.export.runtimes import OrtRunner

    _, data = classify_run
    path = sorted((data / "normal").iterdir())[0]
    result = infer(bundle, path, "--out", tmp_path / "r.json")
    assert result.returncode == 0
    got = json.loads((tmp_path / "r.json").read_text())["results"][0]
    from torchvision import tv_tensors
    from torchvision.io import read_image

    x = build_transforms("classify", 32, train=False)(tv_tensors.Image(read_image(str(path))))[None].numpy()
    logits = OrtRunner(bundle / "model/onnxruntime-fp32/model.onnx").run(x)[0]
    expected = torch.softmax(torch.from_numpy(logits), 0).numpy()
    assert np.allclose([got[f"prob_{c}"] for c in ("benign", "in_situ", "invasive", "normal")], expected, atol=2e-3)


def test_bad_inputs_get_a_line_each_and_the_run_goes_on(bundle, classify_run, tmp_path):
    _, data = classify_run
    good = sorted((data / "benign").iterdir())[0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:50])
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((40, 40), 120, np.uint8), "L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((40, 40, 4), 150, np.uint8), "RGBA").save(rgba)
    small = tmp_path / "small.png"
    Image.fromarray(np.full((16, 16, 3), 150, np.uint8)).save(small)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = infer(bundle, good, corrupt, gray, rgba, small, empty, "--out", tmp_path / "out" / "r.csv")
    assert result.returncode == 1
    rows = {Path(r["input"]).name: r for r in read_csv(tmp_path / "out" / "r.csv")}
    assert rows[good.name]["status"] == rows["gray.png"]["status"] == rows["rgba.png"]["status"] == "ok"
    assert rows["corrupt.png"]["status"] == "error" and "cannot read image" in rows["corrupt.png"]["error"]
    assert "smaller than the model input 32x32" in rows["small.png"]["error"]
    assert rows["empty"]["error"] == "folder holds no images"
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_tiling_a_large_tiff_streams_with_bounded_memory(bundle, tmp_path):
    """A 4096 x 4096 tiled TIFF (48 MB decoded) is tiled without ever being decoded whole."""
    side, tile = 4096, 256
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal([230, 150, 200], 12, (tile, tile, 3)), 0, 255).astype(np.uint8)
    white = np.full((tile, tile, 3), 250, np.uint8)

    def tiles():
        for ty in range(side // tile):
            for tx in range(side // tile):
                yield pink if tx < (side // tile) // 4 else white  # a quarter of the slide is tissue

    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb")
    from pathnas.deploy import infer as infer_module

    args = infer_module.parser().parse_args([str(bundle), str(slide), "--out", str(tmp_path / "r.csv")])
    args.format = "csv"
    tracemalloc.start()
    code = infer_module.run(args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 0
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB: the slide was decoded whole"  # vs 50 MB decoded
    row = read_csv(tmp_path / "r.csv")[0]
    assert int(row["tiles"]) > 20000 and 0.2 < int(row["tissue_tiles"]) / int(row["tiles"]) < 0.3
    assert (tmp_path / "tiles" / "slide_tiles.csv").exists() and Path(row["heatmap"]).exists()


def test_segmentation_bundle_writes_masks(tmp_path):
    run, data = make_validated_run(tmp_path, "segment")
    out = tmp_path / "seg-bundle"
    assert subprocess.run([*CLI, "package", str(run), "--device", "cpu", "--out", str(out), "--no-latency"]).returncode == 0
    image = sorted((data / "images").iterdir())[0]
    result = infer(out, image, "--out", tmp_path / "r.csv", "--mask-dir", tmp_path / "masks", blocked=True)
    assert result.returncode == 0, result.stderr
    mask = np.asarray(Image.open(tmp_path / "masks" / f"{image.stem}_mask.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1}


# -- latency regression of a bundle --------------------------------------------------------------

def test_regress_a_bundle_against_its_manifest_baseline(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path / "b")
    ok = subprocess.run([*CLI, "regress", str(copy), "--tolerance", "1.0", "--rounds", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["latency_baseline"]["samples_ms"] = [s * 0.3 for s in manifest["latency_baseline"]["samples_ms"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    slow = subprocess.run([*CLI, "regress", str(copy), "--rounds", "2"], capture_output=True, text=True)
    assert slow.returncode == 1 and "REGRESSED" in slow.stdout
