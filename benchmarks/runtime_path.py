"""The torch-free workstation runtime against the toolchain, on this machine.

    python benchmarks/runtime_path.py [--run demo] [--json]

Needs a validated run directory (`make demo` writes demo/). Measures:
- installed size of the runtime's dependency closure (pathnas-edge's base install) against the
  full toolchain (`pathnas-edge[toolchain]`), from the distributions installed in this environment;
- cold start, process start to first prediction: `pathnas-infer` on one image against a
  process that loads the PyTorch model from its checkpoint and predicts the same image;
- tiles per second of `pathnas-infer` on a 4096 x 4096 tiled TIFF (a quarter of it tissue).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

TORCH_PREDICT = """
import sys, torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from pathnas.data import build_transforms
from pathnas.subnet import load_subnet
model, meta = load_subnet(sys.argv[1])
x = build_transforms(meta["task"], meta["space_config"]["input_size"], False)(
    tv_tensors.Image(F.pil_to_tensor(Image.open(sys.argv[2]).convert("RGB"))))
with torch.no_grad():
    print(model(x[None]).softmax(1))
"""


def closure(requirements: list[str]) -> set[str]:
    """Installed distributions needed by these requirement names (markers with extras skipped)."""
    seen: set[str] = set()
    todo = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower() for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0].strip().lower())
    return seen


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for f in metadata.distribution(name).files or []:
            path = Path(f.locate())
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def requirements(extra: str | None) -> list[str]:
    reqs = metadata.distribution("pathnas-edge").requires or []
    base = [r for r in reqs if "extra ==" not in r]
    if extra is None:
        return base
    return base + [r.split(";")[0] for r in reqs if f'extra == "{extra}"' in r]


def timed(cmd: list[str], repeats: int = 3) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.run / "validate" / "report.json").exists():
        raise SystemExit(f"{args.run} holds no validated run: run `make demo` first (or pass --run)")

    runtime = closure(requirements(None))
    runtime_ov = closure(requirements("runtime"))
    toolchain = closure(requirements("toolchain"))
    sizes = {"runtime (onnxruntime)": installed_mb(runtime), "runtime + openvino": installed_mb(runtime_ov),
             "full toolchain": installed_mb(toolchain)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = tmp / "bundle"
        subprocess.run([sys.executable, "-m", "pathnas.cli", "package", str(args.run), "--device", "cpu",
                        "--out", str(bundle), "--no-latency"], check=True, capture_output=True)
        image = next(p for p in sorted((args.run / "data").rglob("*.png")) if "splits" not in p.name)
        infer_s = timed([sys.executable, "-m", "pathnas.deploy.infer", str(bundle), str(image), "--out", str(tmp / "r.csv")])
        subnet = args.run / "retrain" / "best.pt"
        torch_s = timed([sys.executable, "-c", TORCH_PREDICT, str(subnet), str(image)])

        import tifffile

        side, tile = 4096, 256
        rng = np.random.default_rng(0)
        pink = np.clip(rng.normal([230, 150, 200], 12, (tile, tile, 3)), 0, 255).astype(np.uint8)
        white = np.full((tile, tile, 3), 250, np.uint8)
        tiles = (pink if tx < 4 else white for _ in range(16) for tx in range(16))
        tifffile.imwrite(tmp / "slide.tif", tiles, shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                         photometric="rgb")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pathnas.deploy.infer", str(bundle), str(tmp / "slide.tif"), "--out",
                        str(tmp / "slide.csv"), "--batch-size", "32"], check=True, capture_output=True)
        slide_s = time.perf_counter() - start
        import csv

        row = next(csv.DictReader(open(tmp / "slide.csv")))
    result = {
        "installed_mb": sizes, "distributions": {"runtime": len(runtime), "toolchain": len(toolchain)},
        "cold_start_s": {"pathnas-infer (onnxruntime)": infer_s, "pytorch (load checkpoint + predict)": torch_s},
        "slide": {"side_px": side, "tiles": int(row["tiles"]), "tissue_tiles": int(row["tissue_tiles"]),
                  "seconds": slide_s, "tiles_per_s": int(row["tiles"]) / slide_s,
                  "tissue_tiles_per_s": int(row["tissue_tiles"]) / slide_s},
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print("| installed | MB | distributions |\n|---|---|---|")
    for name, mb in sizes.items():
        n = {"runtime (onnxruntime)": runtime, "runtime + openvino": runtime_ov, "full toolchain": toolchain}[name]
        print(f"| {name} | {mb:.0f} | {len(n)} |")
    print("\n| cold start (process start to first prediction, median of 3) | s |\n|---|---|")
    for name, s in result["cold_start_s"].items():
        print(f"| {name} | {s:.2f} |")
    sl = result["slide"]
    print(f"\n4096 x 4096 tiled TIFF, tile {json.loads((args.run / 'export' / 'preprocess.json').read_text())['input_size']}"
          f" px with 25% overlap: {sl['tiles']} tiles ({sl['tissue_tiles']} tissue) in {sl['seconds']:.1f} s = "
          f"{sl['tiles_per_s']:.0f} tiles/s scanned, {sl['tissue_tiles_per_s']:.0f} tissue tiles/s classified "
          f"(including process start)")


if __name__ == "__main__":
    main()
