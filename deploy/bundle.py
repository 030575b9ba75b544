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

from .card import model_card
from .footprint import runtime_versions
from .manifest import MANIFEST, SCHEMA, bundle_files, verify
from .device import DeviceSettings
from .regress import measure_baseline
from .runtimes import BUNDLE_RUNTIMES, runtime
from .signing import SIGNATURE, TrustedKeys, load_private_key, fingerprint, sign_manifest
from .wsinfer import CONFIG, ConfigMismatch, model_config

DIR_MODE = 0o755
# A bundle's files besides the manifest, its signature (signing.py) and WSInfer's config (wsinfer.py); the
# manifest names each, so a reader takes the names from it.
PREPROCESS = "preprocess.json"
LABELS = "labels.json"
MODEL_CARD = "MODEL_CARD.md"
MODELS = "model"  # model/<backend>-<precision>/<file>
REFERENCE = "reference/latency_reference.onnx"



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


def packageable_rows(report: dict, profile: DeviceSettings, report_path: Path) -> list[dict]:
    """The validation rows a bundle for ``profile`` may ship: artifacts of its runtime that passed (an
    artifact that missed its thresholds is never offered); an error naming why there are none."""
    # Which validated artifacts a runtime's bundle carries is the registry's to say (Runtime.bundles): a
    # TensorRT engine is specific to the GPU and TensorRT version it was built on, so a TensorRT bundle
    # carries the validated ONNX, which onnxruntime's TensorRT provider builds its engine from on the device.
    shipped = runtime(profile.runtime).bundles
    if shipped is None:
        raise ConfigError(f"profile {profile.name} runs {profile.runtime}, which has no bundle (a bundle runs "
                          f"without PyTorch); bundles are made for {', '.join(BUNDLE_RUNTIMES)}")
    backend = shipped.name
    try:
        rows = [r for r in report["rows"] if r["backend"] == backend and r["status"] == "passed" and r.get("artifact")]
    except (KeyError, TypeError) as err:
        raise InvalidFileError(f"{report_path}: not a validation report (rows with backend, status, artifact): "
                               f"{err}") from None
    if not rows:
        raise InvalidFileError(f"{report_path}: no artifact for runtime {profile.runtime} passed validation; "
                               f"nothing can be packaged for {profile.name}")
    return rows


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
    """A bundle's (or a latency pack's) files in a zip, members relative to its root, each recorded as
    0644, folders 0755, so that unzip on the workstation gives files other accounts can read; written
    atomically."""
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




def _signing_trust(sign_key: Path | None) -> TrustedKeys:
    """The signing key's public half as the only trusted key (loaded first: a wrong key or passphrase
    fails before any work); no keys when the bundle is not signed."""
    if sign_key is None:
        return TrustedKeys()
    public = load_private_key(sign_key).public_key()
    return TrustedKeys({fingerprint(public): public}, f"the signing key {sign_key}")


def _copy_models(inputs: PackageInputs, rows: list[dict], staging: Path) -> list[dict]:
    """The validated artifacts into model/<backend>-<precision>/ (an OpenVINO IR with its .bin)."""
    artifacts = []
    for r in rows:
        src = inputs.root / r["artifact"]
        dst = staging / MODELS / f"{r['backend']}-{r['precision']}" / src.name
        _copy(src, dst)
        if src.suffix == ".xml":
            _copy(src.with_suffix(".bin"), dst.with_suffix(".bin"))
        artifacts.append({"backend": r["backend"], "precision": r["precision"],
                          "path": dst.relative_to(staging).as_posix()})
    return artifacts


def _write_config(staging: Path, architecture: str) -> None:
    """WSInfer's config.json, from the bundle's preprocess.json and labels (wsinfer.py)."""
    preprocess = read_json(staging / PREPROCESS, "preprocessing record")
    labels = read_json(staging / LABELS, "labels", kind=list)
    try:
        config = model_config(preprocess, labels, architecture)
    except (ConfigMismatch, KeyError, TypeError, ValueError) as err:
        raise InvalidFileError(f"preprocess.json: cannot be stated as a WSInfer config ({err})") from None
    write_json_atomic(staging / CONFIG, config)


def _manifest(profile: DeviceSettings, report: dict, rows: list[dict], export: dict, retrain: dict | None,
              artifacts: list[dict], classes: list[str], reference: str | None, baseline: dict | None, no_latency_reason: str) -> dict:
    """The manifest without its file hashes (``_seal`` adds them)."""
    preferred = _preferred(artifacts, profile)
    precision_note = None if preferred["precision"] == profile.precision else (
        f"profile {profile.name} asks for {profile.precision}, but no {profile.precision} artifact passed "
        f"validation; the bundle runs {preferred['precision']}")
    return {
        "schema": SCHEMA, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "architecture": export["arch"], "task": export["task"], "classes": classes,
        "preprocess": PREPROCESS, "labels": LABELS, "config": CONFIG,
        "model": {"artifacts": artifacts, "default": preferred["path"], "precision_note": precision_note},
        "profile": {**profile.to_dict(DeviceSettings.MANIFEST_FIELDS), "slide_batch_size": profile.tiles_per_batch},
        "versions": {"validated_with": report.get("versions", {}), "packaged_with": runtime_versions()},
        "dataset": export.get("dataset"),
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


def _preferred(artifacts: list[dict], profile: DeviceSettings) -> dict:
    """The artifact the bundle runs by default: the profile's precision when it passed validation."""
    return next((a for a in artifacts if a["precision"] == profile.precision), artifacts[0])


def _seal(staging: Path, manifest: dict, sign_key: Path | None, trusted: TrustedKeys) -> None:
    """Hash every file into the manifest, sign it (with a key), make the files readable, verify the result."""
    manifest["files"] = {name: sha256_file(staging / name) for name in bundle_files(staging)}
    write_json_atomic(staging / MANIFEST, manifest)
    if sign_key is not None:
        sign_manifest(staging / MANIFEST, sign_key, staging / SIGNATURE)
    _publish_modes(staging)
    verify(staging, trusted)


def package(inputs: PackageInputs, profile: DeviceSettings, out: Path, measure_latency: bool = True,
            no_latency_reason: str = "not asked for", sign_key: Path | None = None, replace: bool = False) -> Path:
    """Build the bundle folder and its .zip atomically; refuses runs whose artifacts did not pass validation.

    ``profile`` is the device the bundle is for (a hardware profile's ``.device``); the latency
    baseline is measured here when ``measure_latency`` (with the
    reference model timed alongside when ``inputs.reference`` is given), else the manifest says
    ``no_latency_reason``. ``sign_key``: an Ed25519 private key; the manifest is signed with it
    (manifest.sig) and the bundle verified against its public half before it is published.
    ``replace``: an existing bundle at ``out`` is replaced (the pipeline's own bundle); otherwise refused.
    """
    out = Path(out)
    report = read_json(inputs.report, "validation report", "run `pathnas-edge validate` first")
    rows = packageable_rows(report, profile, inputs.report)
    if not replace:
        for path in (out, zip_path(out)):
            if path.exists():
                raise AlreadyExistsError(f"{path} already exists; choose another --out or remove it")
    trusted = _signing_trust(sign_key)
    export = read_json(inputs.export, "export record", "run `pathnas-edge export` first")
    retrain = read_json(inputs.retrain_summary, "retrain summary") if inputs.retrain_summary \
        and inputs.retrain_summary.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        artifacts = _copy_models(inputs, rows, staging)
        _copy(inputs.preprocess, staging / PREPROCESS)
        _copy(inputs.labels, staging / LABELS)
        _write_config(staging, export["arch"])
        reference = None
        if inputs.reference is not None:
            _copy(inputs.reference, staging / REFERENCE)
            reference = REFERENCE
        baseline = measure_baseline(staging / _preferred(artifacts, profile)["path"], profile,
                                    staging / reference if reference else None) if measure_latency else None
        manifest = _manifest(profile, report, rows, export, retrain, artifacts,
                             read_json(staging / LABELS, "labels", kind=list), reference, baseline,
                             no_latency_reason)
        (staging / MODEL_CARD).write_text(model_card(manifest, export.get("dataset"), retrain), encoding="utf-8")
        _seal(staging, manifest, sign_key, trusted)
        _move_into_place(staging, out, replace)
        write_zip(out, zip_path(out))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
