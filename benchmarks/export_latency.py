"""FP32 ONNX Runtime vs PyTorch eager, and INT8 vs FP32 (size and latency) per runtime, on this CPU.

    python benchmarks/export_latency.py [--input-size 224] [--width-mult 1.0] [--arch 3575...] [--threads 2] [--json]
    python benchmarks/export_latency.py --run demo [--threads 2] [--json]

Without --run: one ShuffleNet subnet of the paper's space (default: 224 px, width 1.0, a fixed
mixed-kernel architecture, untrained weights), exported through the same code as
`pathnas-edge export`: canonical FP32 ONNX, INT8 QDQ with every layer quantized (per-channel,
calibrated on synthetic training images; no accuracy control, which needs a trained model),
OpenVINO IR of both. With --run RUN: that run's own files, RUN/export/model.onnx and
RUN/quantize/model_int8.onnx (the accuracy-controlled INT8 of `pathnas-edge quantize` or
`export --precision fp32,int8`), and its PyTorch model.

It states the CPU features that decide INT8 speed (VNNI, AMX, read from /proc/cpuinfo) and
prints INT8's latency as a multiple of FP32's for each runtime. Latency at batch 1 with the
timing protocol (warm-up, repeated samples, median / p90) and the same thread count for every
runtime, in interleaved rounds, each runtime keeping its least-disturbed round (lowest median):
on a shared machine another process can take a core for a whole measurement, and
interleaving spreads that over all runtimes. Prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from pathnas.deploy.machine import cpu_model
from pathnas.deploy.runtimes import open_runner
from pathnas.deploy.timing import time_callable
from pathnas.export.openvino_export import export_openvino
from pathnas.deploy.machine import int8_cpu_features

DEFAULT_ARCH = "35753575357535753575"
RUNTIMES = ("onnxruntime", "openvino")


def synthetic_model(args, tmp: Path) -> tuple[torch.nn.Module, Path, Path, tuple[int, ...]]:
    """An untrained subnet of the paper's space, its FP32 ONNX file and its fully quantized INT8 file."""
    from pathnas.data import build_loaders, generate
    from pathnas.export.quantize import calibration_batches, quantize_int8
    from pathnas.onnx import export_onnx
    from pathnas.spaces import build_supernet, space_config

    net = build_supernet(space_config("shufflenet", input_size=args.input_size, width_mult=args.width_mult,
                                      num_classes=4)).eval()
    model = net.extract(args.arch).eval()
    shape = (1, 3, args.input_size, args.input_size)
    generate(tmp / "data", "classify", n_per_class=max(3, args.calibration_images // 4 + 2),
             image_size=args.input_size, seed=0)
    calib = build_loaders(tmp / "data", args.input_size, 16).calib
    export_onnx(model, tmp / "fp32.onnx", shape)
    quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", calibration_batches(calib, args.calibration_images))
    return model, tmp / "fp32.onnx", tmp / "int8.onnx", shape


def run_model(run: Path) -> tuple[torch.nn.Module, Path, Path, tuple[int, ...], dict]:
    """A run directory's PyTorch model, FP32 ONNX and INT8 ONNX files, and its quantization record."""
    from pathnas.io import read_json
    from pathnas.pipeline import RunLayout
    from pathnas.subnet import load_subnet

    layout = RunLayout(run)
    for path, command in ((layout.onnx, "export"), (layout.int8_onnx, "quantize")):
        if not path.is_file():
            sys.exit(f"{path} does not exist: run `pathnas-edge {command} --run-dir {run} --data DATA` first")
    model, meta = load_subnet(layout.model_for_export())
    size = meta["space_config"]["input_size"]
    record = read_json(layout.calibration_record, "calibration record") if layout.calibration_record.is_file() else {}
    return model.eval(), layout.onnx, layout.int8_onnx, (1, 3, size, size), record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="benchmark this run directory's exported files")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best round is kept")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = int8_cpu_features()

    rows, record = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.run:
            model, fp32, int8, shape, record = run_model(args.run)
            what = f"run {args.run} ({record.get('quantizable_nodes', '?')} quantizable layers, kept float: " \
                   f"{', '.join(record.get('float_nodes', [])) or 'none'})"
        else:
            model, fp32, int8, shape = synthetic_model(args, tmp)
            what = f"shufflenet {args.arch} at {args.input_size}px, width x{args.width_mult}, every layer INT8"
        x = torch.randn(*shape)
        xn = x.numpy()

        def eager():
            with torch.no_grad():
                return model(x)

        params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        candidates = [("pytorch eager", "fp32", eager, params_mb)]
        for precision, path in (("fp32", fp32), ("int8", int8)):
            runner = open_runner(path, "onnxruntime", args.threads)
            candidates.append(("onnxruntime", precision, lambda r=runner: r.run(xn), path.stat().st_size / 1e6))
        for precision, path in (("fp32", fp32), ("int8", int8)):
            xml = export_openvino(path, tmp / f"ov_{precision}" / "model.xml")
            runner = open_runner(xml, "openvino", args.threads)
            size = (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6
            candidates.append(("openvino", precision, lambda r=runner: r.run(xn), size))
        best = {}
        for _ in range(args.rounds):
            for name, precision, fn, _size in candidates:
                t = time_callable(fn, warmup_runs=10, warmup_s=0.5, repeats=30)
                if (name, precision) not in best or t.median_ms < best[name, precision].median_ms:
                    best[name, precision] = t
        for name, precision, _fn, size in candidates:
            t = best[name, precision]
            rows.append({"runtime": name, "precision": precision, "size_mb": size, "median_ms": t.median_ms,
                         "p90_ms": t.p90_ms, "images_per_s": 1000 / t.median_ms})
    by = {(r["runtime"], r["precision"]): r for r in rows}
    summary = {
        "ort_fp32_vs_eager_speedup": by[("pytorch eager", "fp32")]["median_ms"] / by[("onnxruntime", "fp32")]["median_ms"],
        "int8_latency_vs_fp32": {rt: by[(rt, "int8")]["median_ms"] / by[(rt, "fp32")]["median_ms"] for rt in RUNTIMES},
        "int8_size_vs_fp32": {rt: by[(rt, "int8")]["size_mb"] / by[(rt, "fp32")]["size_mb"] for rt in RUNTIMES},
    }
    if args.json:
        json.dump({"cpu": cpu_model(), "cpu_int8_features": features, "threads": args.threads, "model": what,
                   "rounds": args.rounds, "rows": rows, **summary, "quantization": record or None}, sys.stdout, indent=2)
        print()
        return
    print(f"# {cpu_model()} ({features['summary']}), {args.threads} threads; {what}; batch 1; "
          f"best of {args.rounds} interleaved rounds")
    print("| runtime | precision | size MB | median ms | p90 ms | images/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['precision']} | {r['size_mb']:.3f} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['images_per_s']:.0f} |")
    print("\n| runtime | INT8 / FP32 latency | INT8 / FP32 size |\n|---|---|---|")
    for rt in RUNTIMES:
        print(f"| {rt} | {summary['int8_latency_vs_fp32'][rt]:.2f}x | {summary['int8_size_vs_fp32'][rt]:.2f} |")
    print(f"\nONNX Runtime FP32 is {summary['ort_fp32_vs_eager_speedup']:.2f}x faster than PyTorch eager. "
          f"INT8 dot products on this CPU: {features['summary']}"
          + ("" if features["vnni"] else " (AVX2 emulates them, with int16 saturation: 7-bit weights)") + ".")


if __name__ == "__main__":
    main()
