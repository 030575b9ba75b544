"""Bundle manifests and their verification. Torch-free: the workstation runtime imports this.

A bundle is a folder whose manifest.json lists the SHA-256 of every other file in it. A
missing, extra or changed file fails verification, names the file, and the runtime refuses
to load the bundle: a tampered or half-copied model never runs.
"""
from __future__ import annotations

from pathlib import Path

from pathnas.errors import InvalidFileError, UserError
from pathnas.io import read_json, sha256_file

MANIFEST = "manifest.json"
SCHEMA = "pathnas-bundle/1"
REQUIRED = {"schema": str, "files": dict, "model": dict, "architecture": str, "task": str, "classes": list,
            "preprocess": str, "labels": str, "profile": dict, "versions": dict, "validation": dict,
            "latency_baseline": (dict, type(None)), "created_at": str}


class BundleError(UserError):
    """A bundle that does not verify; the message names the file at fault."""


def bundle_files(root: Path) -> list[str]:
    """Every file of the bundle except the manifest, as POSIX paths relative to the root."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; {root} is not a pathnas bundle")
    try:
        manifest = read_json(path, "bundle manifest")
    except InvalidFileError as err:
        raise BundleError(str(err)) from None
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{path}: field {key!r} is missing")
        if not isinstance(manifest[key], kind):
            raise BundleError(f"{path}: field {key!r} has the wrong type")
    if manifest["schema"] != SCHEMA:
        raise BundleError(f"{path}: schema {manifest['schema']!r} is not {SCHEMA!r}")
    return manifest


def verification_problems(root: Path) -> list[str]:
    """Everything wrong with the bundle (empty when it verifies)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: not a folder"]
    try:
        manifest = read_manifest(root)
    except BundleError as err:
        return [str(err)]
    problems = []
    listed = manifest["files"]
    present = set(bundle_files(root))
    for name in sorted(set(listed) - present):
        problems.append(f"{root / name}: listed in the manifest but missing")
    for name in sorted(present - set(listed)):
        problems.append(f"{root / name}: not listed in the manifest (an extra file)")
    for name in sorted(present & set(listed)):
        if sha256_file(root / name) != listed[name]:
            problems.append(f"{root / name}: SHA-256 differs from the manifest (changed)")
    for key in ("preprocess", "labels"):
        if manifest[key] not in listed:
            problems.append(f"{root / manifest[key]}: the manifest's {key} file is not among its files")
    for artifact in manifest["model"].get("artifacts", []):
        if artifact["path"] not in listed:
            problems.append(f"{root / artifact['path']}: the model file is not among the manifest's files")
    return problems


def verify(root: Path) -> dict:
    """The manifest of a bundle that verifies; BundleError naming every problem otherwise."""
    problems = verification_problems(root)
    if problems:
        raise BundleError("bundle does not verify:\n  " + "\n  ".join(problems))
    return read_manifest(root)
