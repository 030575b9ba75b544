"""The torch-free workstation runtime against the toolchain, on this machine.

    python benchmarks/runtime_path.py [--run RUN] [--repeats 3] [--json]

Needs a validated run directory (`make demo` writes demo/). Measures:
- installed size of the runtime install's dependency closure (pathnas-edge's base dependencies,
  and with the [runtime] extra for OpenVINO) against the full toolchain ([toolchain] extra), summed
  over the files the installed distributions recorded in this environment;
- cold start, process start to first prediction on one image: `pathnas-infer` (bundle verification
  included) against a process that loads the PyTorch model from its checkpoint and predicts;
- tiles per second of pathnas-infer on a 4096 x 4096 tiled TIFF (a quarter of it tissue), in
  process (model loading included), and the peak resident memory of a `pathnas-infer` process on
  it against one on a single small image (the libraries' share);
- the same slide as scanners write it: JPEG-compressed tiles in a 3-level pyramid stating 4x the
  training resolution, which the runtime reads at the level that matches (tiles/s, level read).
The slides come from tests/bundle_helpers.py's write_slide, the one writer the tests use too.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Process start to first prediction with PyTorch: what a workstation would run without a bundle.
TORCH_PREDICT = """
import sys, torch
from torchvision import tv_tensors
from torchvision.io import read_image
from pathnas.data import build_transforms
from pathnas.subnet import load_subnet
model, meta = load_subnet(sys.argv[1])
x = build_transforms(meta["task"], meta["space_config"]["input_size"], False)(tv_tensors.Image(read_image(sys.argv[2])))
with torch.no_grad():
    print(model.eval()(x[None]).softmax(1))
"""


def median_wall_s(command: list[str], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# The child reports its own high-water mark: VmHWM belongs to the process image after exec, whereas
# ru_maxrss would also count the (large) benchmark process it was forked from.
PEAK_RSS = """
import runpy, sys
sys.argv = ["pathnas-infer"] + sys.argv[1:]
try:
    runpy.run_module("pathnas.deploy.toolkit", run_name="__main__")
finally:
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print("PEAK_KB", hwm.split()[1], file=sys.stderr)
"""


def peak_rss_mb(infer_args: list[str]) -> float:
    """Peak resident memory of a pathnas-infer process (Linux /proc), in MB."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *infer_args], capture_output=True, text=True)
    lines = [l for l in result.stderr.splitlines() if l.startswith("PEAK_KB")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"pathnas-infer {' '.join(infer_args)} failed: {result.stderr[-2000:]}")
    return int(lines[-1].split()[1]) * 1024 / 1e6


def tile_in_process(infer_args: list[str]) -> tuple[dict, float]:
    """pathnas-infer in this process on one slide: its result row and the seconds it took (model loading included)."""
    from pathnas.deploy import toolkit

    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        toolkit.main(infer_args)
    seconds = time.perf_counter() - start
    out = infer_args[infer_args.index("--out") + 1]
    with open(out, newline="") as f:
        row = next(csv.DictReader(f))
    if row["status"] != "ok":
        raise SystemExit(f"pathnas-infer failed on {infer_args[1]}: {row['error']}")
    return row, seconds


def first_image(run: Path) -> Path:
    export = json.loads((run / "export" / "export.json").read_text())
    root = Path((export.get("dataset") or {}).get("root", run / "data"))
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    if not images:
        raise SystemExit(f"no images under {root} (the run's data set) to time a prediction on")
    return images[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo"))
    parser.add_argument("--repeats", type=int, default=3, help="cold starts timed per side (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.run / "validate" / "report.json").exists():
        raise SystemExit(f"{args.run} holds no validated run: run `make demo` first (or pass --run)")

    from pathnas.deploy.footprint import declared_requirements, installed_mb, requirement_closure

    closures = {"runtime (onnxruntime)": requirement_closure(declared_requirements()),
                "runtime + openvino": requirement_closure(declared_requirements(("runtime",))),
                "full toolchain": requirement_closure(declared_requirements(("runtime", "toolchain")))}
    installed = {name: {"mb": installed_mb(dists), "distributions": len(dists)} for name, dists in closures.items()}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = tmp / "bundle"
        subprocess.run([sys.executable, "-m", "pathnas.cli", "package", str(args.run), "--device", "cpu",
                        "--out", str(bundle), "--no-latency"], check=True, capture_output=True)
        image = first_image(args.run)
        infer_cmd = [sys.executable, "-m", "pathnas.deploy.toolkit", str(bundle)]
        cold = {"pathnas-infer (onnxruntime)": median_wall_s([*infer_cmd, str(image), "--out", str(tmp / "r.csv")],
                                                              args.repeats)}
        checkpoint = args.run / "retrain" / "best.pt"
        checkpoint = checkpoint if checkpoint.exists() else args.run / "extract" / "subnet.pt"
        cold["pytorch (load checkpoint + predict)"] = median_wall_s(
            [sys.executable, "-c", TORCH_PREDICT, str(checkpoint), str(image)], args.repeats)

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from bundle_helpers import write_slide

        slide = write_slide(tmp / "slide.tif", 4096)
        slide_args = [str(bundle), str(slide), "--out", str(tmp / "slide.csv"), "--batch-size", "32"]
        row, slide_s = tile_in_process(slide_args)
        pre = json.loads((bundle / "preprocess.json").read_text())
        mpp = pre.get("mpp") or 1.0
        scanned = write_slide(tmp / "scanned.tif", 4096, levels=3, mpp=mpp / 4, compression="jpeg")
        scanned_row, scanned_s = tile_in_process([str(bundle), str(scanned), "--out", str(tmp / "scanned.csv"),
                                                  "--batch-size", "32"])
        rss_mb = peak_rss_mb(slide_args)
        rss_one_image_mb = peak_rss_mb([str(bundle), str(image), "--out", str(tmp / "r.csv")])
    tile_px = json.loads((args.run / "export" / "preprocess.json").read_text())["input_size"]
    result = {
        "installed": installed,
        "cold_start_s": cold,
        "slide": {"side_px": 4096, "tile_px": tile_px, "overlap": 0.25, "tiles": int(row["tiles"]),
                  "tissue_tiles": int(row["tissue_tiles"]), "seconds": slide_s,
                  "tiles_per_s": int(row["tiles"]) / slide_s, "tissue_tiles_per_s": int(row["tissue_tiles"]) / slide_s,
                  "decoded_mb": 4096 * 4096 * 3 / 1e6, "process_peak_rss_mb": rss_mb,
                  "one_image_process_peak_rss_mb": rss_one_image_mb},
        "scanned_slide": {"side_px": 4096, "compression": "jpeg", "levels": 3, "mpp": mpp / 4,
                          "model_mpp": pre.get("mpp"), "level_read": int(scanned_row["level"]),
                          "tile_px_read": int(scanned_row["tile_px"]), "tiles": int(scanned_row["tiles"]),
                          "seconds": scanned_s, "tiles_per_s": int(scanned_row["tiles"]) / scanned_s},
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| install | size MB | distributions |\n|---|---|---|")
    for name, figures in installed.items():
        print(f"| {name} | {figures['mb']:.0f} | {figures['distributions']} |")
    print(f"\n| cold start: process start to first prediction (median of {args.repeats}) | s |\n|---|---|")
    for name, seconds in cold.items():
        print(f"| {name} | {seconds:.2f} |")
    s = result["slide"]
    print(f"\n| 4096 x 4096 tiled TIFF, {tile_px} px tiles, 25% overlap | |\n|---|---|")
    for label, value in (("tiles scanned", s["tiles"]), ("tissue tiles classified", s["tissue_tiles"]),
                         ("seconds (in process)", f"{s['seconds']:.2f}"), ("tiles/s scanned", f"{s['tiles_per_s']:.0f}"),
                         ("tissue tiles/s classified", f"{s['tissue_tiles_per_s']:.0f}"),
                         ("peak RSS of the pathnas-infer process, MB", f"{rss_mb:.0f}"),
                         ("(the same process on one small image, MB)", f"{rss_one_image_mb:.0f}"),
                         ("the image decoded whole would be, MB", f"{s['decoded_mb']:.0f}")):
        print(f"| {label} | {value} |")
    j = result["scanned_slide"]
    print(f"\n| the same, JPEG tiles, 3 levels at {j['mpp']:.3g} um/px (model {j['model_mpp']} um/px) | |\n|---|---|")
    for label, value in (("level read (downsample 2^level)", j["level_read"]),
                         ("tile side read, px", j["tile_px_read"]), ("tiles scanned", j["tiles"]),
                         ("seconds (in process)", f"{j['seconds']:.2f}"), ("tiles/s scanned", f"{j['tiles_per_s']:.0f}")):
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
