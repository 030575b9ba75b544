"""Does every INT8 artifact pass its own validation, in ONNX Runtime and in OpenVINO? On a run's model.

    python benchmarks/int8_runtimes.py [--run demo] [--data RUN/data] [--calibration-images 512] [--json]

Copies the run's model (retrained, else extracted) and data reference into a temporary run, exports
FP32 and INT8 for onnx and openvino (`pathnas-edge export`'s code: per-runtime accuracy control on
val, export/quantize.py) and validates every artifact against PyTorch on val (`validate`'s code).
Prints one row per INT8 artifact: its status, top-1 agreement, metric change, cosine, the file's
size as a share of FP32 and the layers its runtime kept in float, then each runtime's
accuracy-control steps. What passes depends on this CPU's INT8 kernels (VNNI or not): the CPU
features are printed with the table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo"), help="a run directory with an extracted model")
    parser.add_argument("--data", type=Path, default=None, help="its data set (default: RUN/data)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pathnas.deploy.machine import cpu_model, int8_cpu_features
    from pathnas.export.quantize import CALIBRATION_RECORD
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_export, stage_validate
    from pathnas.settings import CalibrationSettings

    source = RunLayout(args.run)
    model = source.model_for_export()
    data = args.data or args.run / "data"
    if not model.is_file() or not data.is_dir():
        raise SystemExit(f"{args.run} has no extracted model or no data: run `make demo` first, or pass --run/--data")
    with tempfile.TemporaryDirectory(prefix="int8-runtimes-") as tmp:
        layout = RunLayout(Path(tmp))
        target = layout.root / model.relative_to(source.root)
        target.parent.mkdir(parents=True)
        shutil.copyfile(model, target)
        artifacts = stage_export(layout, data, ["onnx", "openvino"], ["fp32", "int8"],
                                 CalibrationSettings(calibration_images=args.calibration_images))
        report = stage_validate(layout, data)
        calibration = json.loads((layout.quantize_dir / CALIBRATION_RECORD).read_text())
        fp32_bytes = layout.onnx.stat().st_size
        rows = []
        for artifact, row in zip(artifacts, report["rows"][1:]):
            if artifact["precision"] != "int8":
                continue
            path = layout.root / artifact["path"] if artifact.get("path") else None
            rows.append({"backend": row["backend"], "status": row["status"], "reason": row.get("reason"),
                         "top1_agreement_pct": row.get("top1_agreement_pct"), "metric_delta": row.get("metric_delta"),
                         "cosine": row.get("cosine"), "float_nodes": artifact.get("float_nodes"),
                         "source_size_ratio": (calibration["runtimes"][row["backend"]]["size_ratio"]
                                               if row["backend"] in calibration["runtimes"] else None),
                         "artifact_mb": path.stat().st_size / 1e6 if path and path.is_file() else None})
    result = {"run": str(args.run), "cpu": cpu_model(), "int8_features": int8_cpu_features()["summary"],
              "fp32_onnx_mb": fp32_bytes / 1e6, "images": report["images"], "rows": rows,
              "accuracy_control": {rt: entry["accuracy_control"] for rt, entry in calibration["runtimes"].items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.run}: {cpu_model()} ({result['int8_features']}); FP32 ONNX {result['fp32_onnx_mb']:.3f} MB; "
          f"{report['images']} val images\n")
    print("| runtime | status | agree % | metric Δ | cosine | INT8/FP32 | float layers |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        print(f"| {r['backend']} | {r['status']} | {fmt(r['top1_agreement_pct'], '.2f')} | "
              f"{fmt(r['metric_delta'], '+.2f')} | {fmt(r['cosine'], '.5f')} | {fmt(r['source_size_ratio'], '.3f')} | "
              f"{len(r['float_nodes'] or [])} |")
    for runtime, control in result["accuracy_control"].items():
        if control is None:
            continue
        print(f"\n{runtime}: " + "; ".join(
            f"{s['action']}{' ' + s['node'] if s['node'] else ''} -> {s['top1_agreement_pct']:.2f}% "
            f"({s['size_ratio']:.3f} of FP32)" for s in control["steps"]))
    for r in rows:
        if r["reason"]:
            print(f"\n{r['backend']} int8: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
