"""What the bundle and runtime tests share (test_deploy.py, test_bundle_security.py, test_slides.py,
test_slide_batch.py, test_geojson.py): one validated run and one bundle per test session, the CLIs
run in process or torch-free, the re-hashing a tamperer would do, and synthetic scanner slides
(which benchmarks/ use too)."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from cli_helpers import pathnas_edge

SPACES = {
    "classify": ("shufflenet", dict(width_mult=0.5, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1)), "3575"),
    "segment": ("unet", dict(width_mult=0.25, input_size=32, num_classes=2), "33333333"),
}
CLASSES = ("benign", "in_situ", "invasive", "normal")




def cli(*args) -> tuple[int, str, str]:
    """`pathnas-edge ARGS` in this process; stderr with rich's line wrapping undone."""
    code, out, err = pathnas_edge(*args)
    return code, out, err.replace("\n", "")


def run_infer_here(*args) -> tuple[int, str]:
    """pathnas-infer in this process (for tracemalloc, monkeypatching, and to save a process start)."""
    from pathnas.deploy import toolkit

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        toolkit.main([str(a) for a in args])
    return exit_info.value.code, err.getvalue()


def run_infer_capture(*args) -> tuple[int, str, str]:
    """pathnas-infer in this process, with stdout too."""
    from pathnas.deploy import toolkit

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        toolkit.main([str(a) for a in args])
    return exit_info.value.code, out.getvalue(), err.getvalue()


def make_validated_run(root: Path, task: str, formats: tuple[str, ...] = ("onnx",)) -> tuple[Path, Path]:
    """A real run directory: tiny supernet, extracted subnet, exported and validated artifacts."""
    from pathnas.data import generate
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_export, stage_extract, stage_validate
    from pathnas.spaces import space_config
    from pathnas.train import PretrainConfig, pretrain

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


_SHARED: dict[str, object] = {}


def shared_classify_run(factory) -> tuple[Path, Path]:
    """One validated classification run (ONNX and OpenVINO) for the whole test session, whichever module asks."""
    if "run" not in _SHARED:
        _SHARED["run"] = make_validated_run(factory.mktemp("deploy"), "classify", ("onnx", "openvino"))
    return _SHARED["run"]


def shared_bundle(factory) -> Path:
    """One onnxruntime bundle for this CPU (unsigned, latency baseline measured here) for the whole session."""
    if "bundle" not in _SHARED:
        run, _ = shared_classify_run(factory)
        out = factory.mktemp("bundles") / "cpu-bundle"
        code, _, err = cli("package", run, "--device", "cpu", "--out", out)
        assert code == 0, err
        _SHARED["bundle"] = out
    return _SHARED["bundle"]


# Fixtures for the test modules to import (pytest uses fixtures a module imports): both are built once
# a session, whichever module asks first.
@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    return shared_classify_run(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An onnxruntime bundle for this CPU (unsigned), with a latency baseline measured here."""
    return shared_bundle(tmp_path_factory)


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, symlinks=True)
    return dest


def rehash(bundle: Path, edit=None) -> dict:
    """What someone who can write the bundle does to get a change past the hashes: apply ``edit`` to the
    manifest, then list every file afresh with its SHA-256 (the signature, if any, is left as it was)."""
    from pathnas.deploy.manifest import bundle_files
    from pathnas.io import sha256_file

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    if edit is not None:
        edit(manifest)
    manifest["files"] = {name: sha256_file(bundle / name) for name in bundle_files(bundle)}
    path.write_text(json.dumps(manifest, indent=2))
    return manifest


def sync_config(bundle: Path, classes: list[str] | None = None) -> None:
    """Rewrite WSInfer's config.json from the bundle's preprocess.json and labels, as a thorough tamperer
    would (verify checks that they agree): what is left to catch such a change is the signature."""
    from pathnas.deploy.wsinfer import model_config

    config = json.loads((bundle / "config.json").read_text())
    pre = json.loads((bundle / "preprocess.json").read_text())
    labels = classes or json.loads((bundle / "labels.json").read_text())
    (bundle / "config.json").write_text(json.dumps(model_config(pre, labels, config["architecture"])))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# Runs a module's main (pathnas-infer) with torch, timm and the training code made unimportable (and
# whatever PATHNAS_TEST_BLOCK names, comma-separated), then prints the distributions of every
# third-party module the run imported.
BLOCKED_RUN = textwrap.dedent("""
    import importlib.abc, json, os, runpy, sys
    BLOCKED = ("torch", "torchvision", "timm", "fvcore", "pathnas.train", "pathnas.spaces", "pathnas.search",
               "pathnas.data", "pathnas.cli") + tuple(filter(None, os.environ.get("PATHNAS_TEST_BLOCK", "").split(",")))
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


def torch_free(module: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` in a fresh process where torch and the training code cannot be imported."""
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, module, *map(str, args)], capture_output=True, text=True,
                          env=env)


def infer(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return torch_free("pathnas.deploy.toolkit", *args, env=env)


def imported_distributions(result: subprocess.CompletedProcess) -> set[str]:
    line = next(l for l in result.stderr.splitlines() if l.startswith("IMPORTED:"))
    return {d for dists in json.loads(line[len("IMPORTED:"):]).values() for d in dists}


# -- synthetic whole-slide TIFFs ------------------------------------------------------------------------
# Written the ways scanners write them, for the tests and benchmarks/ (which import this module):
# a square slide whose left ``tissue`` share of tile columns is H&E-pink tissue and the rest glass,
# written tile by tile (memory stays bounded at any size), optionally compressed ("jpeg",
# "jpeg2000", "zlib"), planar-separate RGB, with a pyramid of ``levels`` halvings (SubIFDs, or
# reduced-resolution pages, what OpenSlide's generic TIFF reader takes), stating its resolution
# (``mpp`` at level 0) in the TIFF resolution tags. Test data, not product: it lives here.

PINK = (230, 150, 200)  # eosin-like: the tissue detector counts it
GLASS = 250


def _tiles(side: int, tile: int, tissue: float, planar: bool, seed: int):
    rng = np.random.default_rng(seed)
    pink = np.clip(rng.normal(PINK, 12, (tile, tile, 3)), 0, 255).astype(np.uint8)
    white = np.full((tile, tile, 3), GLASS, np.uint8)
    n = -(-side // tile)
    tissue_columns = int(n * tissue)
    if planar:  # all tiles of the red plane, then green, then blue
        for s in range(3):
            for _ in range(n):
                for tx in range(n):
                    yield (pink if tx < tissue_columns else white)[None, :, :, s]
    else:
        for _ in range(n):
            for tx in range(n):
                yield pink if tx < tissue_columns else white


def write_slide(path: str | Path, side: int = 4096, tile: int = 256, tissue: float = 0.25, levels: int = 1,
                pyramid: str = "subifds", mpp: float | None = None, compression: str | None = None,
                planar: bool = False, seed: int = 0) -> Path:
    """Write the slide (see the module docstring); level k is ``side >> k`` pixels wide."""
    if pyramid not in ("subifds", "pages"):
        raise ValueError(f"pyramid {pyramid!r}: allowed values are subifds, pages")
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=side > 30000) as tw:
        for k in range(levels):
            size = side >> k
            options = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression=compression,
                           shape=(3, size, size) if planar else (size, size, 3),
                           planarconfig="separate" if planar else "contig")
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**k)
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if k == 0 and levels > 1 and pyramid == "subifds":
                options["subifds"] = levels - 1
            if k > 0:
                options["subfiletype"] = 1  # a reduced-resolution image of the one before
            tw.write(_tiles(size, tile, tissue, planar, seed), **options)
    return path
