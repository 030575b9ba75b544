"""Bundle manifests and their verification. Torch-free: the workstation runtime imports this.

A bundle is a folder whose manifest.json lists the SHA-256 of every other file in it, and
which may carry manifest.sig, an Ed25519 signature of the manifest (signing.py). Verification
refuses, naming the file at fault:
- a missing, extra or changed file; a symlink or anything else that is not a plain file or
  folder (a link could point outside the bundle and change after it was hashed);
- a manifest that is not well formed: paths that are absolute or climb out with "..", an empty
  artifacts list, a default model that is not one of the hashed artifacts, a nested
  manifest.json, labels that disagree with the manifest's classes;
- a WSInfer config.json that says something other than preprocess.json and the labels;
- an unsigned bundle, or one signed by an untrusted key, where trusted keys are configured.
The runtime verifies before it loads anything: a tampered or half-copied model never runs.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pathnas.errors import ConfigError, InvalidFileError, UserError
from pathnas.io import read_json, sha256_file

from .device import DeviceSettings
from .runtimes import BUNDLE_RUNTIMES, FILE_BACKENDS
from .signing import MANIFEST, SIGNATURE, SignatureCheck, TrustedKeys, check_signature
from .wsinfer import config_problems

SCHEMA = "pathnas-bundle/1"
# Files at the root that the manifest does not list: itself and its signature.
UNLISTED = (MANIFEST, SIGNATURE)
REQUIRED = {"schema": str, "files": dict, "model": dict, "architecture": str, "task": str, "classes": list,
            "preprocess": str, "labels": str, "profile": dict, "versions": dict, "validation": dict,
            "latency_baseline": (dict, type(None)), "created_at": str}
TASKS = ("classify", "segment")
BACKENDS = FILE_BACKENDS  # as the runtime registry names them
RUNTIMES = BUNDLE_RUNTIMES
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(UserError):
    """A bundle that does not verify; the message names the file at fault."""


def bundle_files(root: Path) -> list[str]:
    """Every plain file of the bundle except the root's manifest and signature, as POSIX paths relative
    to the root (symlinks are not followed; ``unsafe_entries`` reports them)."""
    root = Path(root)
    out = []
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel not in UNLISTED and path.is_file() and not path.is_symlink():
                out.append(rel)
    return sorted(out)


def unsafe_entries(root: Path) -> list[str]:
    """Problems with entries that are not plain files or folders (symlinks, FIFOs, devices), anywhere."""
    problems = []
    for folder, dirs, files in os.walk(root):  # does not descend into linked folders
        for name in sorted(dirs + files):
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                problems.append(f"{path}: a symbolic link (to {os.readlink(path)}); a bundle holds plain files only")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problems.append(f"{path}: not a plain file or folder; a bundle holds plain files only")
    return problems


def _safe_relative(value) -> bool:
    """A relative POSIX path that stays inside the bundle (no absolute path, no '..', no backslash)."""
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts and "." not in path.parts and value == path.as_posix()


def read_manifest(root: Path) -> dict:
    """The manifest's contents with the types of its top-level fields checked (not yet verified)."""
    path = Path(root) / MANIFEST
    if path.is_symlink() or not path.is_file():
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


def structure_problems(root: Path, manifest: dict) -> list[str]:
    """What is malformed in a manifest (paths, artifacts, default model, classes, profile)."""
    root = Path(root)
    at = root / MANIFEST
    problems = []
    files = manifest["files"]
    for name, digest in files.items():
        if not _safe_relative(name):
            problems.append(f"{at}: file path {name!r} must be relative and stay inside the bundle")
        elif PurePosixPath(name).name in UNLISTED:
            problems.append(f"{root / name}: a nested {PurePosixPath(name).name}; only the bundle's root has one")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"{at}: the SHA-256 of {name!r} is not 64 hex digits")
    if "config" in manifest and (not isinstance(manifest["config"], str) or manifest["config"] not in files):
        problems.append(f"{at}: the config file {manifest['config']!r} is not among the hashed files")
    for key in ("preprocess", "labels"):
        if manifest[key] not in files:
            problems.append(f"{at}: the {key} file {manifest[key]!r} is not among the hashed files")
    if manifest["task"] not in TASKS:
        problems.append(f"{at}: task {manifest['task']!r}; allowed: {', '.join(TASKS)}")
    classes = manifest["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        problems.append(f"{at}: classes must be distinct non-empty names (found {classes!r})")
    model = manifest["model"]
    artifacts = model.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        problems.append(f"{at}: model.artifacts is empty: the bundle holds no model")
        artifacts = []
    paths = []
    for i, artifact in enumerate(artifacts):
        if not isinstance(artifact, dict) or artifact.get("backend") not in BACKENDS \
                or not isinstance(artifact.get("precision"), str):
            problems.append(f"{at}: model.artifacts[{i}] needs a backend ({', '.join(BACKENDS)}), a precision "
                            "and a path")
            continue
        paths.append(artifact.get("path"))
        if not isinstance(artifact.get("path"), str) or artifact["path"] not in files:
            problems.append(f"{at}: model.artifacts[{i}] path {artifact.get('path')!r} is not among the hashed files")
    default = model.get("default")
    if artifacts and default not in paths:
        problems.append(f"{at}: model.default {default!r} is not one of the bundle's hashed model artifacts "
                        f"({', '.join(map(str, paths))})")
    reference = manifest.get("latency_reference")
    if reference is not None and (not isinstance(reference, str) or reference not in files):
        problems.append(f"{at}: latency_reference {reference!r} is not among the hashed files")
    try:
        device = DeviceSettings.from_dict(manifest["profile"], at)
    except ConfigError as err:
        problems.append(str(err))
    else:
        if device.runtime not in RUNTIMES:
            problems.append(f"{at}: profile.runtime {device.runtime!r}: bundles are made for {', '.join(RUNTIMES)}")
    return problems


def labels_problems(root: Path, manifest: dict) -> list[str]:
    """The labels file must name exactly the manifest's classes, in order (run after the hashes match)."""
    path = Path(root) / manifest["labels"]
    try:
        labels = read_json(path, "bundle labels", kind=list)
    except UserError as err:
        return [str(err)]
    if labels != manifest["classes"]:
        return [f"{path}: labels {labels} disagree with the manifest's classes {manifest['classes']}"]
    return []


def wsinfer_config_problems(root: Path, manifest: dict) -> list[str]:
    """WSInfer's config.json must say what preprocess.json and the labels say (run after the hashes match)."""
    root = Path(root)
    try:
        preprocess = read_json(root / manifest["preprocess"], "bundle preprocessing")
        config = read_json(root / manifest["config"], "WSInfer model config")
    except UserError as err:
        return [str(err)]
    return config_problems(config, preprocess, manifest["classes"], str(root / manifest["config"]))


@dataclass(frozen=True)
class Verified:
    """A bundle that verified: its manifest and what its signature says."""

    root: Path
    manifest: dict
    signature: SignatureCheck

    def model_path(self, relative: str | None = None) -> Path:
        return self.root / (relative or self.manifest["model"]["default"])


def verification_problems(root: Path, trusted: TrustedKeys | None = None) -> tuple[list[str], SignatureCheck | None]:
    """Everything wrong with the bundle (empty when it verifies), and its signature check."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: not a folder"], None
    problems = unsafe_entries(root)
    try:
        manifest = read_manifest(root)
    except BundleError as err:
        return problems + [str(err)], None
    signature = check_signature(root, trusted or TrustedKeys())
    if signature.problem:
        problems.append(signature.problem)
    structure = structure_problems(root, manifest)
    problems += structure
    listed = {name for name in manifest["files"] if _safe_relative(name)}
    present = set(bundle_files(root))
    for name in sorted(listed - present):
        if not (root / name).is_symlink():  # reported above
            problems.append(f"{root / name}: listed in the manifest but missing")
    for name in sorted(present - listed):
        problems.append(f"{root / name}: not listed in the manifest (an extra file)")
    changed = [name for name in sorted(present & listed) if sha256_file(root / name) != manifest["files"][name]]
    problems += [f"{root / name}: SHA-256 differs from the manifest (changed)" for name in changed]
    if not structure and manifest["labels"] in present and manifest["labels"] not in changed:
        problems += labels_problems(root, manifest)
    if not structure and "config" in manifest \
            and {manifest["config"], manifest["preprocess"]} <= present - set(changed):
        problems += wsinfer_config_problems(root, manifest)
    return problems, signature


def verify(root: Path, trusted: TrustedKeys | None = None) -> Verified:
    """The bundle, verified; BundleError naming every problem otherwise."""
    problems, signature = verification_problems(root, trusted)
    if problems:
        raise BundleError("bundle does not verify:\n  " + "\n  ".join(problems))
    return Verified(Path(root), read_manifest(root), signature)
