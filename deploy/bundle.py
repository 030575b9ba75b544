"""Packaging: a validated model becomes a self-contained bundle for one device profile.

Torch-free, like the rest of this package; the toolchain's package stage gathers the inputs
(its run directory's validation report, export record, preprocessing and labels, the latency
reference model) and the hardware profile, and calls ``package``. The bundle folder and its
.zip appear only once complete; every file in them is readable by other accounts (0644,
folders 0755), since a hospital's service account, not the packager, runs the model.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pathnas.errors import AlreadyExistsError, ConfigError, InvalidFileError
from pathnas.io import FILE_MODE, atomic_path, read_json, sha256_file, write_json_atomic

from .footprint import runtime_versions
from .manifest import MANIFEST, SCHEMA, bundle_files, verify
from .regress import RunSettings, measure_baseline
from .signing import SIGNATURE, TrustedKeys, load_private_key, fingerprint, sign_manifest

DIR_MODE = 0o755
REFERENCE = "reference/latency_reference.onnx"

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
    reference: Path | None = None  # the latency reference model (regress.py), timed beside the model


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
    mpp = (dataset or {}).get("mpp")
    resolution = (f"Trained at {mpp:.3g} µm per pixel: slides that state their resolution are read at the pyramid "
                  "level and scale that match it; a slide that states none is read at full resolution, as its "
                  "result row says." if mpp else
                  "The training resolution (µm per pixel) was not declared: slides are read at full resolution.")
    lines += ["", "## Using it",
              "- `pathnas-infer verify BUNDLE` checks every file against the manifest (and, with `--trusted-key "
              "KEY.pub`, the packager's signature) before anything runs; `pathnas-infer` does the same itself.",
              "- `pathnas-infer regress BUNDLE` re-checks the latency on the target against the baseline above.",
              "", "## Limitations",
              f"- Inputs are preprocessed as in preprocess.json. {resolution} Other stains or scanners are out of "
              "scope until validated on them.",
              "- Latency figures hold for the stated device, runtime and threads only.",
              "- Trained and validated on the data above only; performance on other data is unknown."]
    return "\n".join(lines) + "\n"


def _copy(src: Path, dst: Path) -> None:
    """Copy contents only (not the source's mode: a run's file may be 0600)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _publish_modes(root: Path) -> None:
    """Folders 0755, files 0644: readable by the account that runs the model, writable by none but the owner."""
    os.chmod(root, DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(folder) / name, DIR_MODE)
        for name in files:
            os.chmod(Path(folder) / name, FILE_MODE)


def write_zip(root: Path, archive: Path) -> None:
    """The bundle's files in a zip (members relative to the bundle root), each recorded as 0644, folders
    0755, so that unzip on the workstation gives files other accounts can read; written atomically."""
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                info = zipfile.ZipInfo(rel + "/", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFDIR | DIR_MODE) << 16 | 0x10
                zf.writestr(info, b"")
            else:
                info = zipfile.ZipInfo.from_file(path, rel)
                info.external_attr = (stat.S_IFREG | FILE_MODE) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as f:
                    zf.writestr(info, f.read())


def _move_into_place(staging: Path, out: Path, replace: bool) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    if not replace:
        raise AlreadyExistsError(f"{out} already exists; choose another --out or remove it")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def package(inputs: PackageInputs, profile, out: Path, measure_latency: bool = True,
            no_latency_reason: str = "not asked for", sign_key: Path | None = None, replace: bool = False) -> Path:
    """Build the bundle folder and its .zip atomically; refuses runs whose artifacts did not pass validation.

    ``profile`` is the hardware profile the bundle is for (name, description, runtime, precision,
    threads, batch_size); the latency baseline is measured here when ``measure_latency`` (with the
    reference model timed alongside when ``inputs.reference`` is given), else the manifest says
    ``no_latency_reason``. ``sign_key``: an Ed25519 private key; the manifest is signed with it
    (manifest.sig) and the bundle verified against its public half before it is published.
    ``replace``: an existing bundle at ``out`` is replaced (the pipeline's own bundle); otherwise refused.
    """
    out = Path(out)
    report = read_json(inputs.report, "validation report", "run `pathnas-edge validate` first")
    rows = _chosen_rows(report, profile, inputs.report)
    if not replace:
        for path in (out, zip_path(out)):
            if path.exists():
                raise AlreadyExistsError(f"{path} already exists; choose another --out or remove it")
    trusted = TrustedKeys()
    if sign_key is not None:  # load it before any work: a wrong key or passphrase fails at once
        public = load_private_key(sign_key).public_key()
        trusted = TrustedKeys({fingerprint(public): public}, f"the signing key {sign_key}")
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
            _copy(src, dst)
            if src.suffix == ".xml":
                _copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
            artifacts.append({"backend": r["backend"], "precision": r["precision"],
                              "path": dst.relative_to(staging).as_posix()})
        _copy(inputs.preprocess, staging / "preprocess.json")
        _copy(inputs.labels, staging / "labels.json")
        reference = None
        if inputs.reference is not None:
            _copy(inputs.reference, staging / REFERENCE)
            reference = REFERENCE
        preferred = next((a for a in artifacts if a["precision"] == profile.precision), artifacts[0])
        precision_note = None if preferred["precision"] == profile.precision else (
            f"profile {profile.name} asks for {profile.precision}, but no {profile.precision} artifact passed "
            f"validation; the bundle runs {preferred['precision']}")
        baseline = None
        if measure_latency:
            baseline = measure_baseline(staging / preferred["path"], RunSettings.of(profile),
                                        staging / reference if reference else None)
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
            # The packager's baseline, covered by the signature; a workstation's own is a separate file.
            "latency_baseline": baseline,
            "latency_reference": reference,
            "latency_baseline_note": None if baseline else (
                f"not measured ({no_latency_reason}); on the device run `pathnas-infer regress BUNDLE "
                f"--update-baseline`, then check with `--baseline` and the file it wrote"),
        }
        (staging / "MODEL_CARD.md").write_text(model_card(manifest, data_summary, retrain), encoding="utf-8")
        manifest["files"] = {name: sha256_file(staging / name) for name in bundle_files(staging)}
        write_json_atomic(staging / MANIFEST, manifest)
        if sign_key is not None:
            sign_manifest(staging / MANIFEST, sign_key, staging / SIGNATURE)
        _publish_modes(staging)
        verify(staging, trusted)
        _move_into_place(staging, out, replace)
        write_zip(out, zip_path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
