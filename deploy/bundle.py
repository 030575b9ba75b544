"""`pathnas-edge package`: a validated run becomes a self-contained bundle for one device profile."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from pathnas.io import write_json_atomic

from .manifest import MANIFEST, SCHEMA, bundle_files, sha256_file, verify

# Which validated artifacts a profile's runtime can use. A TensorRT engine is built on the device
# itself (it is specific to the GPU and TensorRT version), so TensorRT bundles carry the ONNX files.
RUNTIME_BACKENDS = {"onnxruntime-cpu": ("onnxruntime",), "openvino-cpu": ("openvino",),
                    "tensorrt": ("onnxruntime", "tensorrt"), "torch-cuda": ("onnxruntime",)}


def _chosen_rows(report: dict, profile) -> list[dict]:
    backends = RUNTIME_BACKENDS[profile.runtime]
    rows = [r for r in report["rows"] if r["backend"] in backends and r["status"] == "passed" and r.get("artifact")]
    if profile.runtime == "tensorrt":
        rows = [r for r in rows if r["backend"] == "onnxruntime"]  # the ONNX the device builds its engine from
    return rows


def model_card(manifest: dict, dataset: dict | None, retrain: dict | None, report: dict) -> str:
    metric = retrain.get("metric_name", "metric") if retrain else "metric"
    lines = [
        f"# Model card: {manifest['task']} model {manifest['architecture']}", "",
        "## Intended use",
        f"Research and decision support for {manifest['task']} of H&E histopathology tiles into "
        f"{', '.join(manifest['classes'])}, on {manifest['profile']['name']} ({manifest['profile']['description']}). "
        "Not a medical device; every output needs review by a qualified pathologist.", "",
        "## Training data",
    ]
    if dataset and "synth" in str(dataset.get("description", "")) + str(dataset.get("generator", "")):
        lines.append(f"**Synthetic data**: {dataset.get('description')} (generator {dataset.get('generator')}, "
                     f"{sum(dataset.get('counts', {}).values())} images of {dataset.get('image_size')} px). "
                     "This model has never seen a real patient image and must not be used on one clinically.")
    elif dataset:
        lines.append(f"{dataset['task']} data from {dataset['root']}: splits {dataset['split_sizes']} (train / val / test)."
                     + (f" {dataset['description']}" if dataset.get("description") else ""))
    else:
        lines.append("The data set summary was not recorded with the run.")
    lines += ["", "## Metrics"]
    if retrain:
        lines.append(f"Validation {metric} {retrain['val'][metric]:.2f}; test {metric} {retrain['test'][metric]:.2f} "
                     f"(test split read once, after model selection on validation).")
    for r in report["rows"]:
        if r["status"] == "passed":
            lines.append(f"- {r['backend']} {r['precision']}: top-1 agreement with PyTorch {r['top1_agreement_pct']:.2f}%, "
                         f"{r['metric_name']} {r['metric']:.2f}, latency p50 {r['latency_p50_ms']:.3f} ms at batch 1 "
                         f"on the validation machine")
    lines += ["", "## Limitations",
              "- Inputs are preprocessed as in preprocess.json; other magnifications, stains or scanners are out of scope "
              "until validated on them.",
              "- Latency figures hold for the stated device, runtime and threads only; `pathnas-edge regress BUNDLE` "
              "re-checks them on the target.",
              "- Trained and validated on the data above only; performance on other data is unknown."]
    return "\n".join(lines) + "\n"


def package(run_dir: Path, profile, out: Path, measure_latency: bool = True) -> Path:
    """Build the bundle folder and its .zip atomically; refuses runs whose artifacts did not pass validation."""
    from pathnas.profiling.regress import make_baseline, measure_samples

    run_dir, out = Path(run_dir), Path(out)
    report_path = run_dir / "validate" / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} does not exist: run `pathnas-edge validate` first")
    report = json.loads(report_path.read_text())
    rows = _chosen_rows(report, profile)
    if not rows:
        raise ValueError(f"{report_path}: no artifact for runtime {profile.runtime} passed validation; "
                         f"nothing can be packaged for {profile.name}")
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    export = json.loads((run_dir / "export" / "export.json").read_text())
    retrain = json.loads((run_dir / "retrain" / "summary.json").read_text()) if (run_dir / "retrain" / "summary.json").exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts = []
        for r in rows:
            src = run_dir / r["artifact"]
            dst = staging / "model" / f"{r['backend']}-{r['precision']}" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            if src.suffix == ".xml":
                shutil.copy2(src.with_suffix(".bin"), dst.with_suffix(".bin"))
            artifacts.append({"backend": r["backend"], "precision": r["precision"],
                              "path": dst.relative_to(staging).as_posix()})
        shutil.copy2(run_dir / "export" / "preprocess.json", staging / "preprocess.json")
        shutil.copy2(run_dir / "export" / "labels.json", staging / "labels.json")
        preferred = next((a for a in artifacts if a["precision"] == profile.precision), artifacts[0])
        baseline = None
        if measure_latency and profile.runs_here():
            model_path = staging / preferred["path"]
            baseline = make_baseline(model_path, profile, measure_samples(model_path, profile))
        data_summary = export.get("dataset")
        manifest = {
            "schema": SCHEMA, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": export["arch"], "task": export["task"], "classes": json.loads((staging / "labels.json").read_text()),
            "preprocess": "preprocess.json", "labels": "labels.json",
            "model": {"artifacts": artifacts, "default": preferred["path"]},
            "profile": {"name": profile.name, "runtime": profile.runtime, "precision": profile.precision,
                        "threads": profile.threads, "description": profile.description},
            "versions": report["versions"], "dataset": data_summary,
            "validation": {"passed": [r for r in report["rows"] if r in rows], "thresholds": report["thresholds"],
                           "images": report["images"], "split": report["split"]},
            "retrain": retrain,
            "latency_baseline": baseline,
            "latency_baseline_note": None if baseline else (
                f"not measured: this machine cannot run {profile.name}; on the device run "
                f"`pathnas-edge regress BUNDLE --update-baseline`"),
        }
        (staging / "MODEL_CARD.md").write_text(model_card(manifest, data_summary, retrain, report), encoding="utf-8")
        manifest["files"] = {name: sha256_file(staging / name) for name in bundle_files(staging)}
        write_json_atomic(staging / MANIFEST, manifest)
        verify(staging)
        archive = shutil.make_archive(str(staging), "zip", root_dir=staging)
        os.replace(staging, out)
        os.replace(archive, out.with_suffix(".zip"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        Path(str(staging) + ".zip").unlink(missing_ok=True)
        raise
    return out


def update_baseline(bundle: Path, baseline: dict) -> None:
    """Record a baseline measured on the device, re-hashing nothing else (the manifest is not hashed)."""
    manifest = verify(bundle)
    manifest["latency_baseline"] = baseline
    manifest["latency_baseline_note"] = None
    write_json_atomic(Path(bundle) / MANIFEST, manifest)
