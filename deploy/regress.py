"""Latency regression checks on the target: is this model now slower than its baseline? Torch-free.

A machine is rarely as fast in a later session as when the baseline was taken (clock and
power states, other load, a busy neighbour on the same host), and an absolute comparison
then cries wolf: the same model re-checked against its own baseline failed 4 of 13 times.
So a baseline also times a small fixed **reference model** (shipped in the bundle; built from
the same kind of units as the searched models), in the same run, sample for sample in
alternation with the model (``timing.time_interleaved``). A check does the same here and
compares the model's latency *relative to the reference*: a machine uniformly slower or faster
changes both and cancels, while the model itself becoming slower (a runtime, a setting or a
file that changed) does not.

The relative latency is taken at the fast end of the samples (10th percentiles): on a busy
machine the slow samples are other programs' doing and come and go, whereas the fast end is the
model's own speed (what the latency tables keep too: the fastest round). The verdict is
noise-aware: a bootstrap confidence interval of the ratio now / baseline (timing pairs resampled
together), failing only when the whole interval lies above 1 + tolerance, so one noisy run does
not fail a hospital's CI. ``compare_normalized`` and ``compare`` (absolute, medians) are the
decisions alone (deploy/regress_stats.py), tested on given samples; benchmarks/regress_stability.py
measures them here. This module measures, checks baselines and bundles; deploy/junit.py reports.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from pathnas.errors import ConfigError, InvalidFileError, MissingFileError, UserError
from pathnas.io import read_json, sha256_file, write_json_atomic

from .machine import cpu_model
from .child import run_module
from .device import DeviceSettings
from .manifest import MANIFEST, BundleError, verify
from .runners import use_shared_thread_pool
from .runtimes import open_profile_runner, runtime
from .regress_check import RegressCheck
from .regress_stats import ROUND_SIZE, ROUNDS, Verdict, compare, compare_normalized
from .signing import TrustedKeys
from .timing import time_callable, time_interleaved

BASELINE_SCHEMA = "pathnas-latency-baseline/2"  # /2 adds the reference model's samples
BASELINE_SCHEMAS = ("pathnas-latency-baseline/1", BASELINE_SCHEMA)


class BaselineMismatchError(ConfigError):
    """The baseline was measured on another device or runtime, or for another model."""


def measure_samples(path: str | Path, profile: DeviceSettings, rounds: int = 5, repeats: int = 20) -> list[float]:
    """Per-call latency samples (ms per image) from several timing rounds of a model file
    (.onnx, OpenVINO .xml, TensorRT .engine) in the profile's runtime, at the profile's batch size."""
    runner = open_profile_runner(path, profile.runtime, profile.threads, profile.precision)
    try:
        x = np.random.default_rng(0).standard_normal(runner.fixed_input_shape(profile.batch_size), dtype=np.float32)
        samples: list[float] = []
        for _ in range(rounds):
            samples += time_callable(lambda: runner.run(x), repeats=repeats).samples_ms
    finally:
        runner.close()
    return [s / profile.batch_size for s in samples]


def time_rounds(open_model: Callable[[], object], open_reference: Callable[[], object], batch_size: int = 1,
                rounds: int = ROUNDS, repeats: int = ROUND_SIZE) -> tuple[list[float], list[float]]:
    """Per-call samples (ms per image) of a model and the reference, ``repeats`` pairs a round, taken in
    alternation; each round opens both afresh (``open_model()``, ``open_reference()``: runners), since
    a runtime session has a speed of its own (a few % apart from the next) that a later check's
    sessions do not share, and rounds are what the decision compares."""
    model_ms: list[float] = []
    ref_ms: list[float] = []
    for _ in range(rounds):
        model = open_model()
        try:
            ref = open_reference()
            try:
                x = np.random.default_rng(0).standard_normal(model.fixed_input_shape(batch_size), dtype=np.float32)
                y = np.random.default_rng(0).standard_normal(ref.fixed_input_shape(batch_size), dtype=np.float32)
                m, r = time_interleaved([lambda: model.run(x), lambda: ref.run(y)], repeats=repeats, warmup_s=0.1)
            finally:
                ref.close()
        finally:
            model.close()
        model_ms += [v / batch_size for v in m]
        ref_ms += [v / batch_size for v in r]
    return model_ms, ref_ms


def measure_with_reference(path: str | Path, reference: str | Path, profile: DeviceSettings, rounds: int = ROUNDS,
                           repeats: int = ROUND_SIZE) -> tuple[list[float], list[float]]:
    """``time_rounds`` of a model file and the reference model in the profile's runtime and threads.

    Under ONNX Runtime on the CPU, in a process of its own whose sessions share one thread pool
    (``runners.use_shared_thread_pool``), as a latency pack is timed: with a pool per session, the
    model's and the reference's spinning workers competed and each session ran at a speed of its
    own, and a model measured 1.61x slower was flagged in 6 of 8 checks
    (benchmarks/regress_stability.py); sharing one pool, a 1.91x slower one in 8 of 8, with no false
    alarm for the same model either way."""
    if not runtime(profile.runtime).shared_thread_pool:
        return _time_with_reference(path, reference, profile, rounds, repeats)
    with tempfile.TemporaryDirectory(prefix="pathnas-regress-") as tmp:
        out = Path(tmp) / "samples.json"
        run_module("pathnas.deploy.regress", [str(Path(path).resolve()), str(Path(reference).resolve()),
                                               json.dumps(profile.to_dict()), str(rounds), str(repeats),
                                               str(out)], tmp, f"timing {path} beside the reference model failed",
                   error=ConfigError)
        samples = read_json(out, "regress timings")
    return samples["model_ms"], samples["reference_ms"]


def _time_with_reference(path, reference, profile: DeviceSettings, rounds: int, repeats: int):
    return time_rounds(lambda: open_profile_runner(path, profile.runtime, profile.threads, profile.precision),
                       lambda: open_profile_runner(reference, profile.runtime, profile.threads, "fp32"),
                       profile.batch_size, rounds, repeats)


def make_baseline(path: str | Path, profile: DeviceSettings, samples_ms: list[float], reference: str | Path | None = None,
                  reference_samples_ms: list[float] | None = None) -> dict:
    baseline = {
        "schema": BASELINE_SCHEMA,
        "device": profile.name,
        "runtime": profile.runtime,
        "precision": profile.precision,
        "threads": profile.threads,
        "batch_size": profile.batch_size,
        "model": Path(path).name,
        "model_sha256": sha256_file(path),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "median_ms": float(np.median(samples_ms)),
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "samples_ms": [round(s, 6) for s in samples_ms],
        "reference_sha256": None,
        "reference_median_ms": None,
        "reference_samples_ms": None,
        "round_size": ROUND_SIZE,  # samples_ms (and reference_samples_ms) are rounds of this many, in order
    }
    if reference is not None and reference_samples_ms is not None:
        baseline.update(reference_sha256=sha256_file(reference), reference_median_ms=float(np.median(reference_samples_ms)),
                        reference_samples_ms=[round(s, 6) for s in reference_samples_ms])
    return baseline


def measure_baseline(path: str | Path, profile: DeviceSettings, reference: str | Path | None = None,
                     rounds: int = ROUNDS) -> dict:
    """A baseline of ``path`` measured here: with the reference model timed alongside when there is one."""
    if reference is None:
        return make_baseline(path, profile, measure_samples(path, profile, rounds))
    model_ms, ref_ms = measure_with_reference(path, reference, profile, rounds)
    return make_baseline(path, profile, model_ms, reference, ref_ms)


def _positive_samples(value, at_least: int) -> bool:
    return isinstance(value, list) and len(value) >= at_least and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)


def check_baseline(baseline: dict, profile: DeviceSettings, source: str = "baseline") -> None:
    if not isinstance(baseline, dict) or baseline.get("schema") not in BASELINE_SCHEMAS:
        raise InvalidFileError(f"{source}: not a latency baseline (schema {BASELINE_SCHEMA})")
    for key, expected in (("device", profile.name), ("runtime", profile.runtime), ("threads", profile.threads),
                          ("batch_size", profile.batch_size)):
        if baseline.get(key) != expected:
            raise BaselineMismatchError(
                f"{source} was measured with {key}={baseline.get(key)!r}, but this check runs with {key}={expected!r}; "
                f"measure a baseline here with --update-baseline"
            )
    if not _positive_samples(baseline.get("samples_ms"), 5):
        raise InvalidFileError(f"{source}: samples_ms must list at least 5 positive latencies (ms); re-measure it "
                               f"with --update-baseline")
    size = baseline.get("round_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise InvalidFileError(f"{source}: round_size must be a positive integer (samples per timing round)")
    reference = baseline.get("reference_samples_ms")
    if reference is not None and (not _positive_samples(reference, 5) or len(reference) != len(baseline["samples_ms"])):
        raise InvalidFileError(f"{source}: reference_samples_ms must list one positive latency (ms) per sample of "
                               f"samples_ms; re-measure it with --update-baseline")


def baseline_model(baseline: dict, model_sha256: str) -> dict | None:
    """The model a baseline was measured for, when it is not the one of ``model_sha256``: its name (the
    bundle's, else the file's) and hash; None for the same model or a baseline that does not say."""
    sha = baseline.get("model_sha256")
    if sha is None or sha == model_sha256:
        return None
    return {"name": str(baseline.get("bundle") or baseline.get("model") or "unnamed"), "sha256": str(sha)}


def check_regression(path: str | Path, profile: DeviceSettings, baseline: dict, check: RegressCheck = RegressCheck(),
                     source: str = "baseline", reference: str | Path | None = None) -> Verdict:
    """Measure ``path`` here and judge it against ``baseline`` (a baseline file's contents, or the
    ``latency_baseline`` of a bundle manifest; ``source`` names it in errors). With a ``reference``
    model and a baseline that timed it, the judgement is relative to the reference; otherwise absolute,
    and the verdict's note says so.

    A baseline of another model is the everyday case of "is this build slower than the last release":
    it is compared, and the verdict names that model (``Verdict.baseline_model``). ``same_model`` asks
    for a check of this very model: then such a baseline is refused. ``check``: tolerance, confidence, rounds
    (its baseline and report paths are the caller's). Raises BaselineMismatchError when
    the baseline was measured on another device or runtime, or with another reference model."""
    check_baseline(baseline, profile, source)
    other = baseline_model(baseline, sha256_file(path))
    if other and check.same_model:
        raise BaselineMismatchError(f"{source} was measured for another model ({other['name']}, sha256 "
                                    f"{other['sha256'][:12]}) than {path}, and --same-model asks for a check of this "
                                    "one; measure its baseline here with --update-baseline")
    timed_reference = baseline.get("reference_samples_ms") is not None
    if reference is not None and timed_reference:
        if baseline.get("reference_sha256") != sha256_file(reference):
            raise BaselineMismatchError(f"{source} timed another reference model than {reference}; measure a "
                                        "baseline here with --update-baseline")
        model_ms, ref_ms = measure_with_reference(path, reference, profile, check.rounds, ROUND_SIZE)
        size = baseline.get("round_size")
        verdict = compare_normalized(model_ms, ref_ms, baseline["samples_ms"], baseline["reference_samples_ms"],
                                     check.tolerance, check.confidence,
                                     round_size=ROUND_SIZE if size == ROUND_SIZE else None)
    else:
        verdict = compare(measure_samples(path, profile, check.rounds), baseline["samples_ms"], check.tolerance,
                          check.confidence)
        verdict.note = ("absolute comparison (" + ("the baseline did not time a reference model"
                                                   if reference is not None else "no reference model") +
                        "): a machine slower than when the baseline was taken reads as a regression")
    verdict.baseline_model = other
    return verdict


def save_baseline(path: str | Path, baseline: dict) -> None:
    write_json_atomic(path, baseline)


# -- bundles -------------------------------------------------------------------------------

def default_baseline_path(bundle: Path) -> Path:
    """Where `regress --update-baseline` writes a workstation's own baseline by default: beside the
    bundle, never inside it (that would change what was signed)."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}.baseline.json"


def _bundle_model(bundle: Path, trusted: TrustedKeys | None) -> tuple[dict, DeviceSettings, Path, Path | None]:
    verified = verify(bundle, trusted)
    manifest = verified.manifest
    reference = manifest.get("latency_reference")
    return (manifest, DeviceSettings.from_dict(manifest["profile"], str(Path(bundle) / MANIFEST), BundleError),
            verified.model_path(),
            Path(bundle) / reference if reference else None)


def check_bundle(bundle: Path, check: RegressCheck = RegressCheck(), trusted: TrustedKeys | None = None
                 ) -> tuple[Verdict, DeviceSettings]:
    """Verdict of the bundle's default model timed here against its baseline (the signed manifest's,
    or ``check.baseline``: e.g. the previous release's, or one this workstation measured; with
    ``check.same_model`` it must be of this bundle's model), and the device it was timed as (the bundle's)."""
    manifest, profile, model, reference = _bundle_model(bundle, trusted)
    if check.baseline is not None:
        baseline, source = read_json(check.baseline, "latency baseline",
                                     "measure one with `pathnas-infer regress BUNDLE --update-baseline`"), str(check.baseline)
    else:
        baseline, source = manifest["latency_baseline"], str(Path(bundle) / MANIFEST)
    if baseline is None:
        raise MissingFileError(f"{source} has no latency baseline "
                               f"({manifest.get('latency_baseline_note') or 'none was measured'})")
    return check_regression(model, profile, baseline, check, source, reference), profile


def measure_bundle_baseline(bundle: Path, check: RegressCheck = RegressCheck(),
                            trusted: TrustedKeys | None = None) -> tuple[dict, Path]:
    """Measure the bundle's default model here (with its reference model, ``check.rounds``) and write the
    baseline to ``check.baseline`` (default: beside the bundle). The bundle itself is never changed: its
    manifest's baseline is the packager's, covered by the signature; a check uses this file only when
    passed --baseline."""
    _, profile, model, reference = _bundle_model(bundle, trusted)
    baseline = measure_baseline(model, profile, reference, check.rounds)
    baseline["bundle"] = Path(bundle).name
    out = Path(check.baseline) if check.baseline is not None else default_baseline_path(bundle)
    if out.resolve().is_relative_to(Path(bundle).resolve()):
        raise ConfigError(f"{out}: a baseline file must not be written inside the bundle (it would no longer verify)")
    save_baseline(out, baseline)
    return baseline, out


def _timing_process(argv: list[str]) -> None:
    """measure_with_reference's own process: MODEL REFERENCE SETTINGS ROUNDS REPEATS OUT."""
    model, reference, settings, rounds, repeats, out = argv
    profile = DeviceSettings.from_dict(json.loads(settings), "the timing request")
    use_shared_thread_pool(profile.threads)  # this process only times
    try:
        model_ms, reference_ms = _time_with_reference(model, reference, profile, int(rounds), int(repeats))
    except UserError as err:
        sys.exit(str(err))  # the parent quotes this line
    write_json_atomic(Path(out), {"model_ms": model_ms, "reference_ms": reference_ms})


if __name__ == "__main__":
    _timing_process(sys.argv[1:])
