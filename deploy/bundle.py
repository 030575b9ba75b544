"""Packaging: a validated model becomes a self-contained bundle for one device profile.

Torch-free, like the rest of this package; the toolchain's package stage gathers the inputs
(its run directory's validation report, export record, preprocessing and labels) and the
hardware profile, and calls ``package``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

from dataclasses import dataclass

from pathnas.errors import AlreadyExistsError, ConfigError, InvalidFileError
from pathnas.io import read_json, sha256_file, write_json_atomic

from .footprint import runtime_versions
from .manifest import MANIFEST, SCHEMA, bundle_files, verify
from .regress import RunSettings, make_baseline, measure_samples

# Which validated artifacts (validation report backends) a profile's runtime can use. A TensorRT
# engine is specific to the GPU and TensorRT version it was built on, so a TensorRT bundle carries
# the validated ONNX, which onnxruntime's TensorRT provider builds its engine from on the device.
# Bundles run without PyTorch, so torch-cuda profiles have no bundle.
RUNTIME_BACKENDS = {"onnxruntime-cpu": "onnxruntime", "openvino-cpu": "openvino", "tensorrt": "onnxruntime"}


TASK_WORDS = {"classify": "classification", "segment": "segmentation"}


def zip_path(bundle: Path) -> Path:
    return Path(f"{bundle}.zip")


@dataclass(frozen=True)
class PackageInputs:
    """What a bundle is made from: files a validated run wrote."""

    root: Path  # the artifact paths of the report are relative to it
    report: Path  # the validation report (report.json)
    export: Path  # the export record (export.json)
    preprocess: Path
    labels: Path
    retrain_summary: Path | None = None


def _chosen_rows(report: dict, profile, report_path: Path) -> list[dict]:
    if profile.runtime not in RUNTIME_BACKENDS:
        raise ConfigError(f"profile {profile.name} runs {profile.runtime}; a bundle runs without PyTorch, on a profile "
                          f"whose runtime is one of {', '.join(RUNTIME_BACKENDS)}")
    backend = RUNTIME_BACKENDS[profile.runtime]
    try:
        rows = [r for r in report["rows"] if r["backend"] == backend and r["status"] == "passed" and r.get("artifact")]
    except (KeyError, TypeError) as err:
        raise InvalidFileError(f"{report_path}: not a validation report (rows with backend, status, artifact): "
                               f"{err}") from None
    if not rows:
        raise InvalidFileError(f"{report_path}: no artifact for runtime {profile.runtime} passed validation; "
                               f"nothing can be packaged for {profile.name}")
    return rows


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _is_synthetic(dataset: dict) -> bool:
    return "synth" in f"{dataset.get('description', '')} {dataset.get('generator', '')}".lower()


def model_card(manifest: dict, dataset: dict | None, retrain: dict | None) -> str:
    """MODEL_CARD.md: intended use, training data (plainly flagged when synthetic), metrics, limitations."""
    profile, validation = manifest["profile"], manifest["validation"]
    lines = [
        f"# Model card: {manifest['task']} model {manifest['architecture']}", "",
        "## Intended use",
        f"Research and decision support: {TASK_WORDS[manifest['task']]} of H&E histopathology images into "
        f"{', '.join(manifest['classes'])}, on {profile['name']} ({profile['description']}). "
        "Not a medical device; every output needs review by a qualified pathologist.", "",
        "## Training data",
    ]
    if not dataset:
        lines.append("The data set summary was not recorded with the run.")
    else:
        splits = f"splits {dataset.get('split_sizes')} (train / val / test)"
        if _is_synthetic(dataset):
            lines.append(f"**Synthetic data**: {dataset.get('description')} (generator {dataset.get('generator')}, "
                         f"images of {dataset.get('image_size')} px, {splits}). This model has never seen a real "
                         "patient image and must not be used on one clinically.")
        else:
            lines.append(f"{dataset.get('task')} data from {dataset.get('root')}: {splits}."
                         + (f" {dataset['description']}" if dataset.get("description") else ""))
    lines += ["", "## Metrics"]
    if retrain:
        metric = retrain.get("metric_name", "metric")
        val, test = retrain.get("val") or {}, retrain.get("test") or {}
        lines.append(f"Retrained model: validation {metric} {_fmt(val.get(metric))}; test {metric} "
                     f"{_fmt(test.get(metric))} (the test split is read once, after model selection on validation).")
    else:
        lines.append("**Not retrained**: the model keeps the weights it inherited from the search supernet; "
                     "no test-split figure was measured.")
    lines.append(f"Packaged artifacts against the PyTorch model on {_fmt(validation.get('images'), 'd')} "
                 f"{validation.get('split') or ''} images:")
    for r in validation["rows"]:
        lines.append(f"- {r['backend']} {r['precision']}: top-1 agreement with PyTorch {_fmt(r.get('top1_agreement_pct'))}%, "
                     f"{r.get('metric_name')} {_fmt(r.get('metric'))}, latency p50 {_fmt(r.get('latency_p50_ms'), '.3f')} "
                     "ms at batch 1 on the validation machine")
    baseline = manifest.get("latency_baseline")
    if baseline:
        lines.append(f"Latency baseline on {baseline['device']}: median {baseline['median_ms']:.3f} ms, "
                     f"p90 {baseline['p90_ms']:.3f} ms per image ({baseline['runtime']}, {baseline['threads']} threads).")
    lines += ["", "## Limitations",
              "- Inputs are preprocessed as in preprocess.json; other magnifications, stains or scanners are out of scope "
              "until validated on them.",
              "- Latency figures hold for the stated device, runtime and threads only; `pathnas-infer regress BUNDLE` "
              "re-checks them on the target.",
              "- Trained and validated on the data above only; performance on other data is unknown."]
    return "\n".join(lines) + "\n"


def package(inputs: PackageInputs, profile, out: Path, measure_latency: bool = True,
            no_latency_reason: str = "not asked for") -> Path:
    """Build the bundle folder and its .zip atomically; refuses runs whose artifacts did not pass validation.

    ``profile`` is the hardware profile the bundle is for (name, description, runtime, precision,
    threads, batch_size); the latency baseline is measured here when ``measure_latency``, else the
    manifest says ``no_latency_reason``.
    """
    out = Path(out)
    report = read_json(inputs.report, "validation report", "run `pathnas-edge validate` first")
    rows = _chosen_rows(report, profile, inputs.report)
    for path in (out, zip_path(out)):
        if path.exists():
            raise AlreadyExistsError(f"{path} already exists; choose another --out or remove it")
    export = read_json(inputs.export, "export record", "run `pathnas-edge export` first")
    retrain = read_json(inputs.retrain_summary, "retrain summary") if inputs.retrain_summary \
        and inputs.retrain_summary.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts = []
        for r in rows:
            src = inputs.root / r["artifact"]
            dst = staging / "model" / f"{r['backend']}-{r['precision']}" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            if src.suffix == ".xml":
                shutil.copy2(src.with_suffix(".bin"), dst.with_suffix(".bin"))
            artifacts.append({"backend": r["backend"], "precision": r["precision"],
                              "path": dst.relative_to(staging).as_posix()})
        shutil.copy2(inputs.preprocess, staging / "preprocess.json")
        shutil.copy2(inputs.labels, staging / "labels.json")
        preferred = next((a for a in artifacts if a["precision"] == profile.precision), artifacts[0])
        precision_note = None if preferred["precision"] == profile.precision else (
            f"profile {profile.name} asks for {profile.precision}, but no {profile.precision} artifact passed "
            f"validation; the bundle runs {preferred['precision']}")
        baseline = None
        if measure_latency:
            model_path = staging / preferred["path"]
            settings = RunSettings.of(profile)
            baseline = make_baseline(model_path, settings, measure_samples(model_path, settings))
        data_summary = export.get("dataset")
        manifest = {
            "schema": SCHEMA, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "architecture": export["arch"], "task": export["task"],
            "classes": read_json(staging / "labels.json", "labels", kind=list),
            "preprocess": "preprocess.json", "labels": "labels.json",
            "model": {"artifacts": artifacts, "default": preferred["path"], "precision_note": precision_note},
            "profile": {"name": profile.name, "runtime": profile.runtime, "precision": profile.precision,
                        "threads": profile.threads, "batch_size": profile.batch_size,
                        "description": profile.description},
            "versions": {"validated_with": report.get("versions", {}), "packaged_with": runtime_versions()},
            "dataset": data_summary,
            # rows: the packaged artifacts' validation; others: what was not packaged, and why
            "validation": {"rows": rows, "thresholds": report.get("thresholds"), "images": report.get("images"),
                           "split": report.get("split"),
                           "others": [{k: r.get(k) for k in ("backend", "precision", "status", "reason")}
                                      for r in report["rows"] if r not in rows]},
            "retrain": retrain,
            "latency_baseline": baseline,
            "latency_baseline_note": None if baseline else (
                f"not measured ({no_latency_reason}); "
                f"on the device run `pathnas-infer regress BUNDLE --update-baseline`"),
        }
        (staging / "MODEL_CARD.md").write_text(model_card(manifest, data_summary, retrain), encoding="utf-8")
        manifest["files"] = {name: sha256_file(staging / name) for name in bundle_files(staging)}
        write_json_atomic(staging / MANIFEST, manifest)
        verify(staging)
        archive = shutil.make_archive(str(staging), "zip", root_dir=staging)
        os.replace(staging, out)
        os.replace(archive, zip_path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        Path(str(staging) + ".zip").unlink(missing_ok=True)
        raise
    return out
