"""A bundle nobody can quietly change: Ed25519-signed manifests, the keys a workstation trusts, and
the tampering that re-hashing the manifest used to get past (symlinks, a model outside the bundle,
a nested manifest, no model at all, labels that disagree with the classes)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle_helpers import (bundle, classify_run, cli, copy_bundle, infer, rehash,  # noqa: F401 (fixtures)
                            run_infer_capture, run_infer_here, sync_config)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs: the packager's and someone else's."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("packager", "other"):
        code, _, err = cli("keys", "new", "--out", folder / f"{name}.key")
        assert code == 0, err
    return folder


@pytest.fixture(scope="module")
def signed(classify_run, keys, tmp_path_factory):
    run, _ = classify_run
    out = tmp_path_factory.mktemp("signed") / "signed-bundle"
    code, stdout, err = cli("package", run, "--device", "cpu", "--out", out, "--sign-key", keys / "packager.key",
                            "--no-latency")
    assert code == 0, err
    stdout = stdout.replace("\n", "")  # rich wraps at 80 columns
    assert ", signed" in stdout and "--trusted-key packager.key.pub" in stdout
    return out


@pytest.fixture()
def no_system_trust(monkeypatch, tmp_path):
    """Nothing configured on this machine, whatever the environment running the tests has."""
    from pathnas.deploy import signing

    monkeypatch.delenv(signing.ENV_TRUSTED_KEYS, raising=False)
    monkeypatch.setattr(signing, "SYSTEM_TRUSTED_KEYS", tmp_path / "no-such-folder")


def test_keys_new_writes_a_private_key_only_its_owner_can_read(tmp_path):
    code, out, err = cli("keys", "new", "--out", tmp_path / "k.key", "--json")
    assert code == 0, err
    result = json.loads(out)
    private, public = tmp_path / "k.key", tmp_path / "k.key.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    body = b"".join(private.read_bytes().splitlines()[1:-1]).decode()
    assert body not in out + err and "PRIVATE" not in out + err  # never printed
    assert result["fingerprint"].startswith("SHA256:")
    for key in (private, public):  # the same fingerprint from either half
        code, out, _ = cli("keys", "show", key, "--json")
        assert code == 0 and json.loads(out)["fingerprint"] == result["fingerprint"]
    code, _, err = cli("keys", "new", "--out", private)
    assert code == 2 and "k.key already exists" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_key_readable_by_others_or_encrypted_without_its_passphrase_does_not_sign(classify_run, tmp_path,
                                                                                   monkeypatch):
    from pathnas.deploy.signing import load_private_key

    run, _ = classify_run
    assert cli("keys", "new", "--out", tmp_path / "k.key")[0] == 0
    (tmp_path / "k.key").chmod(0o644)
    code, _, err = cli("package", run, "--device", "cpu", "--out", tmp_path / "b", "--sign-key", tmp_path / "k.key")
    assert code == 2 and "permissions 0644 let other accounts read it; run `chmod 600" in err
    assert not (tmp_path / "b").exists()
    code, _, err = cli("package", run, "--device", "cpu", "--out", tmp_path / "b", "--sign-key", tmp_path / "k.key.pub")
    assert code == 2 and "k.key.pub: not a PEM private key" in err
    monkeypatch.setenv("PATHNAS_KEY_PASSPHRASE", "correct horse battery staple")
    assert cli("keys", "new", "--out", tmp_path / "enc.key")[0] == 0
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()
    load_private_key(tmp_path / "enc.key")
    monkeypatch.setenv("PATHNAS_KEY_PASSPHRASE", "tr0ub4dor")
    with pytest.raises(ValueError, match="cannot be loaded") as err:
        load_private_key(tmp_path / "enc.key")
    assert "tr0ub4dor" not in str(err.value) and "staple" not in str(err.value)
    monkeypatch.delenv("PATHNAS_KEY_PASSPHRASE")
    with pytest.raises(ValueError, match="encrypted; set PATHNAS_KEY_PASSPHRASE"):
        load_private_key(tmp_path / "enc.key")


def test_a_signed_bundle_verifies_against_its_key_and_no_other(signed, keys, no_system_trust):
    assert (signed / "manifest.sig").exists() and "manifest.sig" not in json.loads(
        (signed / "manifest.json").read_text())["files"]
    code, out, _ = cli("verify", signed, "--trusted-key", keys / "packager.key.pub")
    assert code == 0 and "signed by trusted key SHA256:" in out
    code, out, _ = cli("verify", signed, "--trusted-key", keys / "packager.key.pub", "--json")
    assert json.loads(out)["signature"] == "trusted"
    code, _, err = cli("verify", signed, "--trusted-key", keys / "other.key.pub")
    assert code == 1 and "signed by a key that is not trusted here" in err
    code, out, _ = cli("verify", signed)  # no trusted key: the hashes only, and it says so
    assert code == 0 and "NOT checked: no trusted key is configured" in out
    code, _, err = cli("verify", signed, "--trusted-key", keys / "packager.key")
    assert code == 2 and "holds a private key; trust its .pub file" in err


def test_unsigned_bundles_work_only_where_no_key_is_trusted(bundle, keys, tmp_path, no_system_trust):
    code, out, _ = cli("verify", bundle)
    assert code == 0 and "UNSIGNED" in out
    code, _, err = cli("verify", bundle, "--trusted-key", keys / "packager.key.pub")
    assert code == 1 and "manifest.sig: missing; the bundle is unsigned" in err
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    code, err = run_infer_here(bundle, image, "--out", tmp_path / "r.csv")
    assert code == 0 and "UNSIGNED" in err
    code, err = run_infer_here(bundle, image, "--out", tmp_path / "r2.csv", "--trusted-key", keys / "packager.key.pub")
    assert code == 2 and "refusing to run" in err and "unsigned" in err and not (tmp_path / "r2.csv").exists()
    junit = tmp_path / "j.xml"
    code, _, err = run_infer_capture("regress", bundle, "--trusted-key", keys, "--junit", junit)  # a folder of keys
    assert code == 2 and "unsigned" in err and 'errors="1"' in junit.read_text()


def test_trusted_keys_from_the_environment_or_the_system_folder(signed, bundle, keys, tmp_path, monkeypatch,
                                                               no_system_trust):
    from pathnas.deploy import signing

    trusted = tmp_path / "trusted"
    trusted.mkdir()
    monkeypatch.setattr(signing, "SYSTEM_TRUSTED_KEYS", trusted)  # an empty folder is a mistake, not "trust all"
    code, _, err = cli("verify", signed)
    assert code == 2 and "holds no public key" in err
    (trusted / "packager.pub").write_bytes((keys / "packager.key.pub").read_bytes())
    assert cli("verify", signed)[0] == 0
    code, _, err = cli("verify", bundle)
    assert code == 1 and "unsigned" in err
    monkeypatch.setenv(signing.ENV_TRUSTED_KEYS, str(keys / "other.key.pub"))  # the variable comes first
    code, _, err = cli("verify", signed)
    assert code == 1 and "not trusted here" in err and signing.ENV_TRUSTED_KEYS in err
    env = {**os.environ, signing.ENV_TRUSTED_KEYS: str(keys / "packager.key.pub")}
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    result = infer(signed, image, "--out", tmp_path / "r.json", env=env)  # torch-free, cryptography only
    assert result.returncode == 0 and "signed by trusted key" in result.stderr, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["signature"].startswith("signed by trusted key")
    env[signing.ENV_TRUSTED_KEYS] = str(tmp_path / "missing.pub")
    result = infer(signed, image, "--out", tmp_path / "r2.json", env=env)
    assert result.returncode == 2 and "missing.pub does not exist" in result.stderr


def _signed_copy(signed: Path, tmp_path: Path) -> Path:
    return copy_bundle(signed, tmp_path / "b")


@pytest.mark.parametrize("change", ["labels", "preprocess", "model"])
def test_re_hashing_a_changed_signed_bundle_does_not_get_past_the_signature(signed, keys, tmp_path, change,
                                                                           no_system_trust):
    copy = _signed_copy(signed, tmp_path)
    if change == "labels":
        (copy / "labels.json").write_text(json.dumps(["benign", "in_situ", "normal", "invasive"]))
        sync_config(copy)
        rehash(copy, lambda m: m.update(classes=["benign", "in_situ", "normal", "invasive"]))
    elif change == "preprocess":
        pre = json.loads((copy / "preprocess.json").read_text())
        (copy / "preprocess.json").write_text(json.dumps({**pre, "mean": [0.0, 0.0, 0.0]}))
        sync_config(copy)
        rehash(copy)
    else:
        other = copy / "model/onnxruntime-fp32/model.onnx"
        other.write_bytes((copy / "reference/latency_reference.onnx").read_bytes())
        rehash(copy)
    assert cli("verify", copy)[0] == 0  # the hashes alone are satisfied: this is what signing is for
    code, _, err = cli("verify", copy, "--trusted-key", keys / "packager.key.pub")
    assert code == 1 and "the signature does not match the manifest (changed after signing)" in err
    (copy / "manifest.sig").unlink()
    code, _, err = cli("verify", copy, "--trusted-key", keys / "packager.key.pub")
    assert code == 1 and "unsigned" in err
    (copy / "manifest.sig").write_text('{"schema": "pathnas-bundle-signature/1"')
    code, _, err = cli("verify", copy, "--trusted-key", keys / "packager.key.pub")
    assert code == 1 and "manifest.sig: not a signature file" in err


# -- what re-hashing used to get past, even without signatures -------------------------------------------

def _symlink_outside(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(["a", "b", "c", "d"]))
    (bundle / "labels.json").unlink()
    (bundle / "labels.json").symlink_to(outside)


def _symlinked_folder(bundle: Path, tmp_path: Path) -> None:
    os.rename(bundle / "model", tmp_path / "model-elsewhere")
    (bundle / "model").symlink_to(tmp_path / "model-elsewhere")


def _model_outside(bundle: Path, tmp_path: Path) -> str:
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "other.onnx").write_bytes((bundle / "model/onnxruntime-fp32/model.onnx").read_bytes())
    return "../evil/other.onnx"


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CASES = {
    "symlinked file": (_symlink_outside, None, "labels.json: a symbolic link"),
    "symlinked folder": (_symlinked_folder, None, "model: a symbolic link"),
    "default model outside": (_model_outside, "default", "model.default '../evil/other.onnx' is not one of the "
                                                          "bundle's hashed model artifacts"),
    "default model not an artifact": (None, lambda m: m["model"].update(default="MODEL_CARD.md"),
                                      "model.default 'MODEL_CARD.md' is not one of"),
    "artifact path climbing out": (None, lambda m: m["model"]["artifacts"][0].update(path="../x.onnx"),
                                   "path '../x.onnx' is not among the hashed files"),
    "nested manifest": (lambda b, t: (b / "model" / "manifest.json").write_text("{}"), None,
                        "model/manifest.json: a nested manifest.json"),
    "no model": (None, lambda m: m["model"].update(artifacts=[]), "model.artifacts is empty"),
    "labels disagree": (lambda b, t: (b / "labels.json").write_text('["w", "x", "y", "z"]'), None,
                        "labels ['w', 'x', 'y', 'z'] disagree with the manifest's classes"),
    "WSInfer config disagrees": (lambda b, t: _edit_json(b / "config.json", spacing_um_px=0.25), None,
                                 "config.json: spacing_um_px is 0.25, but preprocess.json and the labels say 2.0"),
    "slide batch beyond the engines'": (None, lambda m: m["profile"].update(slide_batch_size=64),
                                        "profile.slide_batch_size 64 is not an integer from 1 to 8"),
    "preprocessing changed under the config": (lambda b, t: _edit_json(b / "preprocess.json", image_px=64), None,
                                               "config.json: patch_size_pixels is 32, but preprocess.json and the "
                                               "labels say 64"),
}


@pytest.mark.parametrize("case", CASES)
def test_tampering_that_re_hashing_used_to_hide_is_refused(bundle, tmp_path, case, no_system_trust):
    """Each of these passed `verify` once the manifest was re-hashed; now verify and every pathnas-infer
    command refuse them, and nothing outside the bundle is ever read or timed."""
    change, edit, message = CASES[case]
    copy = copy_bundle(bundle, tmp_path / "b")
    default = change(copy, tmp_path) if change else None
    if isinstance(default, str):
        edit = lambda m: m["model"].update(default=default)  # noqa: E731
    rehash(copy, edit)
    code, _, err = cli("verify", copy)
    assert code == 1 and message in err, err
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    code, err = run_infer_here(copy, image, "--out", tmp_path / "r.csv")
    assert code == 2 and "refusing to run" in err and message in err and "Traceback" not in err
    code, _, err = run_infer_capture("regress", copy, "--rounds", "1")
    assert code == 2 and message in err


def test_a_zip_unpacked_elsewhere_verifies(bundle, tmp_path, no_system_trust):
    import zipfile

    with zipfile.ZipFile(f"{bundle}.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    code, out, _ = cli("verify", tmp_path / "unzipped")
    assert code == 0 and "every file matches" in out


def test_the_pipeline_signs_its_bundle_and_the_smoke_test_checks_the_signature(classify_run, keys, tmp_path,
                                                                              no_system_trust):
    import shutil

    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import SmokeTestError, stage_package, stage_smoke_test
    from pathnas.profiling import load_profile

    run, data = classify_run
    layout = RunLayout(shutil.copytree(run, tmp_path / "run"))
    stage_package(layout, load_profile("cpu"), measure_latency=False, sign_key=keys / "packager.key")
    assert cli("verify", layout.bundle, "--trusted-key", keys / "packager.key.pub")[0] == 0
    record = stage_smoke_test(layout, data, images=2, sign_key=keys / "packager.key")
    assert record["passed"] and record["signed"] and record["signature_checked"]
    assert record["workstation_commands"][0] == "pathnas-infer verify bundle --trusted-key packager.key.pub"
    with pytest.raises(SmokeTestError, match="pathnas-infer exited 2"):  # checked against another key: refused
        stage_smoke_test(layout, data, images=2, sign_key=keys / "other.key")
    assert "not trusted here" in json.loads(layout.smoke_test.read_text())["stderr_tail"]


def test_a_model_whose_outputs_do_not_fit_the_labels_is_refused(bundle, tmp_path, no_system_trust):
    """Labels and classes changed together (and re-hashed) agree with each other, but not with the model."""
    copy = copy_bundle(bundle, tmp_path / "b")
    three = ["benign", "in_situ", "invasive"]
    (copy / "labels.json").write_text(json.dumps(three))
    sync_config(copy)
    rehash(copy, lambda m: m.update(classes=three))
    assert cli("verify", copy)[0] == 0
    image = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image)
    code, err = run_infer_here(copy, image, "--out", tmp_path / "r.csv")
    assert code == 2 and "the model outputs shape (1, 4), which does not fit a classify model of the 3 classes" in err
