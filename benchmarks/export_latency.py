"""FP32 ONNX Runtime vs PyTorch eager, and INT8 vs FP32 (size and latency), on this CPU.

    python benchmarks/export_latency.py [--input-size 224] [--width-mult 1.0] [--arch 3575...] [--threads 2] [--json]

One ShuffleNet subnet of the paper's space (default: 224 px, width 1.0, a fixed mixed-kernel
architecture), exported through the same code as `pathnas-edge export`: canonical FP32 ONNX,
INT8 QDQ (per-channel, calibrated on synthetic training images), OpenVINO IR of both.
Latency at batch 1 with the timing protocol (warm-up, repeated samples, median / p90) and
the same thread count for every runtime. The runtimes are timed in interleaved rounds and
each keeps its least-disturbed round (lowest median): on a shared machine another process
can take a core for a whole measurement, and interleaving spreads that over all runtimes.
Prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pathnas.data import build_loaders, generate
from pathnas.deploy.machine import cpu_model
from pathnas.deploy.runners import open_runner
from pathnas.deploy.timing import time_callable
from pathnas.export.openvino_export import export_openvino
from pathnas.export.quantize import calibration_batches, quantize_int8
from pathnas.onnx import export_onnx
from pathnas.spaces import build_supernet, space_config

DEFAULT_ARCH = "35753575357535753575"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    net = build_supernet(space_config("shufflenet", input_size=args.input_size, width_mult=args.width_mult,
                                      num_classes=4)).eval()
    model = net.extract(args.arch).eval()
    shape = (1, 3, args.input_size, args.input_size)
    x = torch.randn(*shape)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", "classify", n_per_class=max(3, args.calibration_images // 4 + 2),
                 image_size=args.input_size, seed=0)
        calib = build_loaders(tmp / "data", args.input_size, 16).calib
        export_onnx(model, tmp / "fp32.onnx", shape)
        quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", calibration_batches(calib, args.calibration_images))
        export_openvino(tmp / "fp32.onnx", tmp / "ov_fp32" / "model.xml")
        export_openvino(tmp / "int8.onnx", tmp / "ov_int8" / "model.xml")

        def eager():
            with torch.no_grad():
                return model(x)

        params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        candidates = [("pytorch eager", "fp32", eager, params_mb)]
        xn = x.numpy()
        for name, precision, path in (("onnxruntime", "fp32", tmp / "fp32.onnx"), ("onnxruntime", "int8", tmp / "int8.onnx")):
            runner = open_runner(path, "onnxruntime", args.threads)
            candidates.append((name, precision, lambda r=runner: r.run(xn), path.stat().st_size / 1e6))
        for precision in ("fp32", "int8"):
            xml = tmp / f"ov_{precision}" / "model.xml"
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
    ort32, ort8 = by[("onnxruntime", "fp32")], by[("onnxruntime", "int8")]
    summary = {
        "ort_fp32_vs_eager_speedup": by[("pytorch eager", "fp32")]["median_ms"] / ort32["median_ms"],
        "int8_size_pct_of_fp32": 100 * ort8["size_mb"] / ort32["size_mb"],
        "ort_int8_latency_vs_fp32": ort8["median_ms"] / ort32["median_ms"],
        "openvino_int8_latency_vs_fp32": by[("openvino", "int8")]["median_ms"] / by[("openvino", "fp32")]["median_ms"],
    }
    if args.json:
        json.dump({"cpu": cpu_model(), "threads": args.threads, "arch": args.arch, "rounds": args.rounds, "rows": rows,
                   **summary},
                  sys.stdout, indent=2)
        print()
        return
    print(f"# {cpu_model()}, {args.threads} threads; shufflenet {args.arch} at {args.input_size}px, "
          f"width x{args.width_mult}; batch 1; best of {args.rounds} interleaved rounds")
    print("| runtime | precision | size MB | median ms | p90 ms | images/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['precision']} | {r['size_mb']:.2f} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['images_per_s']:.0f} |")
    print(f"\nONNX Runtime FP32 is {summary['ort_fp32_vs_eager_speedup']:.2f}x faster than PyTorch eager; "
          f"INT8 is {summary['int8_size_pct_of_fp32']:.0f}% of the FP32 size; INT8 latency is "
          f"{summary['ort_int8_latency_vs_fp32']:.2f}x FP32 in ONNX Runtime and "
          f"{summary['openvino_int8_latency_vs_fp32']:.2f}x in OpenVINO on this CPU"
          f"{' (AVX2 without VNNI: no fast INT8 dot products)' if 'vnni' not in Path('/proc/cpuinfo').read_text() else ''}.")


if __name__ == "__main__":
    main()
