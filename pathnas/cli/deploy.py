"""Commands that make and check what ships: package, verify, regress, and the signing keys.

`verify` and `regress` of a bundle are the workstation toolkit's (`pathnas-infer verify|regress`),
run here too; `regress` of a bare model file takes a baseline file and a hardware profile.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from pathnas.deploy.regress_check import RegressCheck
from pathnas.errors import ConfigError
from pathnas.settings import RemoteDevice

from .common import JSON_HELP, console, on_interrupt, print_json
from .options import record_options, settings_options

TRUSTED_KEY_HELP = ("accept only bundles signed by this public key (a .pub file or a folder of them; repeatable; "
                    "default: $PATHNAS_TRUSTED_KEYS, else /etc/pathnas-edge/trusted-keys if it exists, else "
                    "unsigned bundles pass and are said to be unsigned)")


def package(
    run_dir: Path = typer.Argument(..., help="a run directory whose artifacts passed `pathnas-edge validate`"),
    device: str = typer.Option(..., help="hardware profile the bundle is for"),
    out: Path = typer.Option(..., help="bundle folder to create (a .zip of it is written beside it)"),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Ed25519 private key to sign the manifest "
                                                                     "with (`pathnas-edge keys new`)"),
    no_latency: bool = typer.Option(False, "--no-latency", help="do not measure the latency baseline here"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Package a validated model for an offline workstation: model files, preprocessing, labels,
    manifest with SHA-256 of every file (signed with --sign-key), model card, latency baseline."""
    from pathnas.deploy.manifest import read_manifest
    from pathnas.deploy.signing import SIGNATURE
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_package
    from pathnas.profiling import load_profile

    on_interrupt("nothing was written: a bundle appears only once it is complete; run the command again")
    # force: an explicit --out is built now or refused if it exists, never silently taken as up to date
    bundle = stage_package(RunLayout(run_dir), load_profile(device), out, measure_latency=not no_latency, force=True,
                           sign_key=sign_key)
    manifest = read_manifest(bundle)
    baseline = manifest["latency_baseline"]
    signed = (bundle / SIGNATURE).exists()
    if as_json:
        print_json({"bundle": str(bundle), "zip": f"{bundle}.zip", "files": manifest["files"], "signed": signed,
                    "model": manifest["model"], "latency_baseline": baseline})
        return
    console.print(f"[green]bundle[/green] {bundle} and {bundle}.zip: {len(manifest['files'])} files, "
                  f"model {manifest['model']['default']}, " + ("signed" if signed else "UNSIGNED (no --sign-key)"))
    console.print(f"latency baseline: {baseline['median_ms']:.3f} ms median on {baseline['device']}" if baseline
                  else f"latency baseline: {manifest['latency_baseline_note']}", markup=False)
    trust = f" --trusted-key {sign_key.name}.pub" if signed else ""
    console.print(f"on the workstation: pathnas-infer verify {bundle.name}{trust}", markup=False)


def verify(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    trusted_key: Optional[List[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check the manifest, every hash and the signature; exit 1 naming each problem."""
    from pathnas.deploy.toolkit import verify_bundle

    code = verify_bundle(bundle, as_json, trusted_key)
    if code:
        raise typer.Exit(code)


@settings_options(RemoteDevice, what="remote", into="device_link", options={"remote": {
    "help": "check the bundle on this device over SSH ([user@]host, as ssh takes it): it is copied there, "
            "verified and timed by pathnas-infer there, and the verdict (or --update-baseline's file) comes back"}})
@record_options(RegressCheck, into="check")
def regress(
    device_link: RemoteDevice,
    check: RegressCheck,
    model: Path = typer.Argument(..., help="a bundle folder, an ONNX model (.onnx) or OpenVINO IR (.xml)"),
    device: Optional[str] = typer.Option(None, help="hardware profile of this machine, for a model file "
                                                    "(default: cpu)"),
    trusted_key: Optional[List[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Exit 1 when the model is slower on this device than its baseline beyond the tolerance, judged
    relative to a reference model timed alongside (so a machine uniformly slower than when the baseline
    was taken does not fail) with a bootstrap confidence interval (a noisy run alone does not fail).
    The check is the workstation toolkit's (`pathnas-infer regress`); a model file gets its run
    settings from --device and the reference model built here. With --remote the bundle is checked on
    that device over SSH, which needs only the runtime install."""
    from pathnas.deploy.junit import junit_on_error
    from pathnas.deploy.toolkit import regress_bundle, regress_model
    from pathnas.profiling.reference import write_reference_model
    from pathnas.profiling import load_profile

    if device_link.remote is not None:
        if device is not None:
            raise ConfigError("--device is for model files here; with --remote a bundle runs on the profile it was "
                              "packaged for")
        code = _regress_remote(device_link, model, check, trusted_key or [], as_json)
        if code:
            raise typer.Exit(code)
        return
    with tempfile.TemporaryDirectory(prefix="pathnas-reference-") as tmp:
        with junit_on_error(None if check.update_baseline else check.junit, model.name):
            if model.is_dir():  # a bundle names its model and its profile
                if device is not None:
                    raise ConfigError("--device is for model files; a bundle runs on the profile it was packaged for")
            elif check.baseline is None:
                raise ConfigError("--baseline FILE is needed for a model file (a bundle carries its own)")
            else:
                settings = load_profile(device or "cpu").device
                # The same fixed reference model bundles carry (its SHA-256 is in the baseline), built afresh.
                reference = write_reference_model(Path(tmp) / "reference.onnx")
        if model.is_dir():
            code = regress_bundle(model, check, as_json, trusted_key)
        else:
            code = regress_model(model, settings, reference, check, as_json)
    if code:
        raise typer.Exit(code)


def _regress_remote(link: RemoteDevice, bundle: Path, check: RegressCheck, trusted_keys: list[Path],
                    as_json: bool) -> int:
    """`regress --remote`: the bundle checked on the device over SSH; the verdict reported here as a
    local check's is (line or JSON, JUnit file, exit code)."""
    import time

    from pathnas.deploy.junit import junit_on_error
    from pathnas.deploy.regress import default_baseline_path
    from pathnas.deploy.regress_stats import Verdict
    from pathnas.deploy.toolkit import report_verdict
    from pathnas.errors import MissingFileError
    from pathnas.profiling.remote import Remote, RemoteError

    start = time.perf_counter()
    with junit_on_error(None if check.update_baseline else check.junit, f"{bundle.name}@{link.remote}"):
        if not bundle.is_dir():
            raise ConfigError(f"--remote checks a bundle folder (it names its model and profile); {bundle} is not "
                              f"one: package it with `pathnas-edge package`")
        for path in ([check.baseline] if check.baseline is not None and not check.update_baseline else []) + trusted_keys:
            if not path.exists():
                raise MissingFileError(f"{path} does not exist")
        remote = Remote(link.remote, link.ssh_config, link.remote_infer)  # regress() checks it before copying
        if check.update_baseline:
            out = check.baseline or default_baseline_path(bundle)
            measured = remote.regress(bundle, check.to_argv(), trusted_keys=trusted_keys, update_baseline=out)
            console.print(f"baseline measured on {link.remote} written to {out}: median "
                          f"{float(measured.get('median_ms', float('nan'))):.3f} ms; check against it with "
                          f"`pathnas-edge regress {bundle} --remote {link.remote} --baseline {out}`", markup=False)
            return 0
        record = remote.regress(bundle, check.to_argv(), check.baseline, trusted_keys)
        try:
            verdict = Verdict.from_record(record, f"the verdict from {link.remote}")
        except ValueError as err:
            raise RemoteError(str(err)) from None
    device = record.get("device") if isinstance(record.get("device"), str) else "?"
    return report_verdict(verdict, {"bundle": str(bundle), "device": device, "host": link.remote},
                          f"{bundle.name}@{device} on {link.remote}", check.junit, time.perf_counter() - start, as_json)


# -- signing keys --------------------------------------------------------------------------------

keys_app = typer.Typer(help="Ed25519 keys that sign bundles (package --sign-key) and that workstations trust "
                            "(--trusted-key).", no_args_is_help=True)


@keys_app.command("new")
def keys_new(
    out: Path = typer.Option(Path("pathnas-signing.key"), help="private key file to create (mode 0600); the public "
                                                                "key goes beside it as OUT.pub"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make a signing key pair. The private key never leaves this machine and is never printed; give the
    .pub file to the workstations (--trusted-key, $PATHNAS_TRUSTED_KEYS or /etc/pathnas-edge/trusted-keys).
    Set $PATHNAS_KEY_PASSPHRASE to encrypt the private key (and to sign with it later)."""
    from pathnas.deploy.signing import new_keypair

    private, public, fp = new_keypair(out)
    if as_json:
        print_json({"private_key": str(private), "public_key": str(public), "fingerprint": fp})
        return
    console.print(f"private key {private} (mode 0600: keep it on the packaging machine)", markup=False)
    console.print(f"public key  {public} (give it to the workstations)", markup=False)
    console.print(f"fingerprint {fp}", markup=False)


@keys_app.command("show")
def keys_show(
    key: Path = typer.Argument(..., help="a public key, or a private key (only its public half is shown)"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print a key's fingerprint (the one `verify` names), never the key itself."""
    from pathnas.deploy.signing import key_fingerprint

    fp = key_fingerprint(key)
    if as_json:
        print_json({"key": str(key), "fingerprint": fp})
    else:
        console.print(f"{key}: {fp}", markup=False)


COMMANDS = (package, verify, regress)
