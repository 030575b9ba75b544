"""Validating every exported artifact against the PyTorch reference on real validation images.

For each backend x precision: max and median absolute difference of the outputs, cosine
similarity, top-1 agreement with PyTorch (per pixel for segmentation, plus the Dice of the
two masks), the task metric and its change from PyTorch, the provider that actually ran, and
latency at batch 1 through the timing protocol. Thresholds (docs/design.md, "Validation
thresholds"): FP32 agreement 100% and cosine >= 0.99999; FP16 agreement >= 99.5%; INT8
agreement >= 98% and a metric drop of at most 1 point. A miss makes the row "failed-validation"
and says by how much.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pathnas.deploy.machine import int8_cpu_features, versions
from pathnas.deploy.runners import ProviderError
from pathnas.deploy.runtimes import CPU_BACKENDS, open_runner
from pathnas.deploy.timing import time_callable
from pathnas.errors import InvalidFileError

THRESHOLDS = {
    "fp32": {"agreement_pct": 100.0, "cosine": 0.99999},
    "fp16": {"agreement_pct": 99.5},
    "int8": {"agreement_pct": 98.0, "metric_drop": 1.0},
}
STATUSES = ("passed", "failed-validation", "failed", "skipped")


VERSIONED = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "polygraphy")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _mask_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice between two predicted label maps."""
    scores = []
    for c in range(1, num_classes):
        pa, pb = a == c, b == c
        denom = pa.sum() + pb.sum()
        if denom:
            scores.append(2 * (pa & pb).sum() / denom)
    return float(100 * np.mean(scores)) if scores else 100.0


def reference_outputs(model: torch.nn.Module, batches: list[np.ndarray]) -> list[np.ndarray]:
    model.eval()
    with torch.no_grad():
        return [model(torch.from_numpy(b)).numpy() for b in batches]


def compare_outputs(task: str, num_classes: int, ref: list[np.ndarray], out: list[np.ndarray],
                    targets: list[np.ndarray]) -> dict:
    from pathnas.train import MetricAccumulator, primary_metric

    ref_all, out_all = np.concatenate(ref), np.concatenate(out)
    if ref_all.shape != out_all.shape:
        raise InvalidFileError(f"output shape {out_all.shape} differs from PyTorch's {ref_all.shape}")
    diff = np.abs(ref_all - out_all)
    ref_pred, out_pred = ref_all.argmax(1), out_all.argmax(1)
    metrics = {}
    for name, logits in (("reference", ref_all), ("backend", out_all)):
        acc = MetricAccumulator(task, num_classes)
        acc.update(torch.from_numpy(logits), torch.from_numpy(np.concatenate(targets)))
        metrics[name] = acc.result()[primary_metric(task)]
    row = {
        "max_abs_diff": float(diff.max()), "median_abs_diff": float(np.median(diff)),
        "cosine": _cosine(ref_all, out_all), "top1_agreement_pct": float(100 * np.mean(ref_pred == out_pred)),
        "metric_name": primary_metric(task), "metric": metrics["backend"],
        "metric_delta": metrics["backend"] - metrics["reference"], "reference_metric": metrics["reference"],
    }
    if task == "segment":
        row["mask_dice_vs_pytorch_pct"] = _mask_dice(ref_pred, out_pred, num_classes)
    return row


def verdict(precision: str, row: dict) -> tuple[str, str | None]:
    """passed, or failed-validation with what missed and by how much."""
    t = THRESHOLDS[precision]
    misses = []
    if row["top1_agreement_pct"] < t["agreement_pct"]:
        misses.append(f"top-1 agreement {row['top1_agreement_pct']:.2f}% < {t['agreement_pct']}% "
                      f"(short by {t['agreement_pct'] - row['top1_agreement_pct']:.2f} points)")
    if "cosine" in t and row["cosine"] < t["cosine"]:
        misses.append(f"cosine {row['cosine']:.7f} < {t['cosine']}")
    if "metric_drop" in t and -row["metric_delta"] > t["metric_drop"]:
        misses.append(f"{row['metric_name']} dropped {-row['metric_delta']:.2f} points > {t['metric_drop']}")
    if misses and "cosine" not in t:  # not a threshold here, but how far the outputs moved
        misses.append(f"cosine {row['cosine']:.5f}, max |delta| {row['max_abs_diff']:.3g}")
    return ("failed-validation", "; ".join(misses)) if misses else ("passed", None)


def int8_notes(report: dict, features: dict | None = None) -> list[str]:
    """Per runtime: INT8's latency as a multiple of FP32's on this CPU, with the instruction sets that
    decide it (VNNI, AMX) and the figures INT8 reached (agreement, cosine)."""
    features = features or int8_cpu_features()
    notes = []
    for backend in CPU_BACKENDS:
        rows = {r["precision"]: r for r in report["rows"] if r["backend"] == backend and r.get("latency_p50_ms")}
        if "fp32" not in rows or "int8" not in rows:
            continue
        int8 = rows["int8"]
        ratio = int8["latency_p50_ms"] / rows["fp32"]["latency_p50_ms"]
        speed = (f"INT8 is {ratio:.2f}x the FP32 latency on this CPU ({features['summary']}): slower, so the CPU "
                 f"profiles keep FP32" if ratio > 1 else
                 f"INT8 runs at {ratio:.2f}x the FP32 latency on this CPU ({features['summary']})")
        kept = int8.get("float_nodes")
        notes.append(f"{backend}: {speed}; INT8 top-1 agreement {int8['top1_agreement_pct']:.2f}%, "
                     f"cosine {int8['cosine']:.5f}"
                     + ("" if kept is None else f", layers kept in float: {', '.join(kept) or 'none'}") + ".")
    return notes


def validation_batches(loader, max_images: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Preprocessed VALIDATION images and their targets, as numpy batches."""
    images, targets, seen = [], [], 0
    for x, y in loader:
        if max_images is not None:
            x, y = x[: max_images - seen], y[: max_images - seen]
        images.append(x.numpy().astype(np.float32))
        targets.append(y.numpy())
        seen += x.shape[0]
        if max_images is not None and seen >= max_images:
            break
    if not images:
        raise InvalidFileError("no validation images: the validation split is empty")
    return images, targets


def time_runner(run, example: np.ndarray) -> dict:
    t = time_callable(lambda: run(example), repeats=20)
    return {"latency_p50_ms": t.median_ms, "latency_p90_ms": t.p90_ms, "images_per_s": 1000.0 / t.median_ms}


def validate_artifact(artifact: dict, root: Path, task: str, num_classes: int, ref: list[np.ndarray],
                      batches: list[np.ndarray], targets: list[np.ndarray], threads: int | None) -> dict:
    """One report row; a runtime failure becomes a 'failed' row, never a crash of the whole report."""
    from .tensorrt_export import Unavailable

    row = {"backend": artifact["backend"], "precision": artifact["precision"], "artifact": artifact.get("path"),
           "device": None, "status": artifact["status"], "reason": artifact.get("reason")}
    if "float_nodes" in artifact:  # INT8: the layers accuracy control kept in float
        row["float_nodes"] = artifact["float_nodes"]
    # failed-validation at export: INT8 whose accuracy control could not pass; measured, never passed
    if artifact["status"] not in ("exported", "failed-validation") or not artifact.get("path"):
        return row
    path = root / artifact["path"]
    row["size_mb"] = sum(p.stat().st_size for p in [path, path.with_suffix(".bin")] if p.exists()) / 1e6
    try:
        runner = open_runner(path, artifact["backend"], threads)
        outputs = [runner.run(b) for b in batches]
        row["device"] = runner.provider
        row.update(compare_outputs(task, num_classes, ref, outputs, targets))
        row.update(time_runner(runner.run, batches[0][:1]))
        runner.close()
    except (Unavailable, ProviderError) as err:  # the runtime is not on this machine: say so, never pretend
        row.update(status="skipped", reason=str(err))
        return row
    except Exception as err:  # a broken artifact is a row of the report, with its error
        row.update(status="failed", reason=f"{type(err).__name__}: {err}")
        return row
    if artifact["status"] == "exported":
        row["status"], row["reason"] = verdict(artifact["precision"], row)
    return row


def pytorch_row(model: torch.nn.Module, batches: list[np.ndarray], ref: list[np.ndarray], targets, task: str,
                num_classes: int) -> dict:
    row = {"backend": "pytorch", "precision": "fp32", "artifact": None, "device": f"torch {torch.__version__} CPU eager",
           "status": "reference", "reason": None, "size_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6}
    row.update(compare_outputs(task, num_classes, ref, ref, targets))

    def run(x):
        with torch.no_grad():
            return model(torch.from_numpy(x))

    row.update(time_runner(run, batches[0][:1]))
    return row


def validate(root: Path, model: torch.nn.Module, artifacts: list[dict], loader, task: str, num_classes: int,
             threads: int | None = None, max_images: int | None = None) -> dict:
    """The validation report (rows in the schema the deployment stage reads)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    batches, targets = validation_batches(loader, max_images)
    ref = reference_outputs(model, batches)
    rows = [pytorch_row(model, batches, ref, targets, task, num_classes)]
    rows += [validate_artifact(a, Path(root), task, num_classes, ref, batches, targets, threads) for a in artifacts]
    checked = [r for r in rows if r["status"] not in ("reference", "skipped")]
    return {"rows": rows, "versions": versions(VERSIONED), "thresholds": THRESHOLDS,
            "images": int(sum(b.shape[0] for b in batches)), "split": "val", "threads": threads,
            "passed": bool(checked) and all(r["status"] == "passed" for r in checked)}
