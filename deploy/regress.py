"""Latency regression checks on the target: is this model now slower than its baseline? Torch-free.

Judged with repeated measurements and a noise-aware comparison: the bootstrap confidence
interval of the ratio of medians (current / baseline). The check fails only when the whole
interval lies above 1 + tolerance, i.e. when the slowdown is beyond the tolerance with the
stated confidence, so one noisy run does not fail a hospital's CI.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from pathnas.errors import ConfigError, InvalidFileError, MissingFileError
from pathnas.io import read_json, sha256_file, write_json_atomic, write_text_atomic

from .machine import cpu_model
from .manifest import MANIFEST, verify
from .runners import open_profile_runner
from .timing import time_callable

BASELINE_SCHEMA = "pathnas-latency-baseline/1"


class BaselineMismatchError(ConfigError):
    """The baseline was measured on another device or runtime."""


@dataclass
class Verdict:
    passed: bool
    ratio: float  # current median / baseline median
    ci_low: float
    ci_high: float
    tolerance: float
    confidence: float
    current_median_ms: float
    baseline_median_ms: float

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        word = "passed" if self.passed else "REGRESSED"
        return (f"{word}: median {self.current_median_ms:.3f} ms vs baseline {self.baseline_median_ms:.3f} ms, "
                f"ratio {self.ratio:.3f} ({100 * self.confidence:.0f}% CI {self.ci_low:.3f}-{self.ci_high:.3f}), "
                f"tolerance +{100 * self.tolerance:.0f}%")


@dataclass(frozen=True)
class RunSettings:
    """How a model is run and timed: what a hardware profile, or a bundle's manifest, says."""

    name: str
    runtime: str
    precision: str
    threads: int
    batch_size: int = 1

    @classmethod
    def of(cls, profile) -> "RunSettings":
        """From a HardwareProfile or a manifest's ``profile`` mapping."""
        get = profile.get if isinstance(profile, dict) else lambda key, default=None: getattr(profile, key, default)
        return cls(get("name"), get("runtime"), get("precision"), int(get("threads")), int(get("batch_size", 1) or 1))


def measure_samples(path: str | Path, profile: RunSettings, rounds: int = 5, repeats: int = 20) -> list[float]:
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


def make_baseline(path: str | Path, profile: RunSettings, samples_ms: list[float]) -> dict:
    return {
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
    }


def check_baseline(baseline: dict, profile: RunSettings, source: str = "baseline") -> None:
    if not isinstance(baseline, dict) or baseline.get("schema") != BASELINE_SCHEMA:
        raise InvalidFileError(f"{source}: not a latency baseline (schema {BASELINE_SCHEMA})")
    for key, expected in (("device", profile.name), ("runtime", profile.runtime), ("threads", profile.threads),
                          ("batch_size", profile.batch_size)):
        if baseline.get(key) != expected:
            raise BaselineMismatchError(
                f"{source} was measured with {key}={baseline.get(key)!r}, but this check runs with {key}={expected!r}; "
                f"measure a baseline here with --update-baseline"
            )
    samples = baseline.get("samples_ms")
    if not isinstance(samples, list) or len(samples) < 5 or not all(isinstance(v, (int, float)) and v > 0 for v in samples):
        raise InvalidFileError(f"{source}: samples_ms must list at least 5 positive latencies (ms); re-measure it "
                               f"with --update-baseline")


def compare(current_ms: list[float], baseline_ms: list[float], tolerance: float = 0.10,
            confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Verdict:
    """Bootstrap CI of median(current) / median(baseline); fails when the CI is entirely above 1 + tolerance."""
    if len(current_ms) < 5 or len(baseline_ms) < 5:
        raise ValueError("at least 5 samples on each side are needed for a noise-aware comparison")
    rng = np.random.default_rng(seed)
    cur, base = np.asarray(current_ms), np.asarray(baseline_ms)
    ratios = (np.median(rng.choice(cur, (resamples, cur.size)), axis=1)
              / np.median(rng.choice(base, (resamples, base.size)), axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha])
    ratio = float(np.median(cur) / np.median(base))
    return Verdict(bool(low <= 1 + tolerance), ratio, float(low), float(high), tolerance, confidence,
                   float(np.median(cur)), float(np.median(base)))


def check_regression(path: str | Path, profile: RunSettings, baseline: dict, tolerance: float = 0.10,
                     confidence: float = 0.95, rounds: int = 5, source: str = "baseline") -> Verdict:
    """Measure ``path`` here and judge it against ``baseline`` (a baseline file's contents, or the
    ``latency_baseline`` of a bundle manifest; ``source`` names it in errors). Raises
    BaselineMismatchError when the baseline was measured on another device or runtime."""
    check_baseline(baseline, profile, source)
    return compare(measure_samples(path, profile, rounds), baseline["samples_ms"], tolerance, confidence)


def _junit(path: str | Path, name: str, seconds: float, body: str, failures: int, errors: int) -> None:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="pathnas-latency" tests="1" failures="{failures}" errors="{errors}" time="{seconds:.3f}">\n'
        f'  <testcase classname="pathnas.latency" name={quoteattr(name)} time="{seconds:.3f}">{body}</testcase>\n'
        "</testsuite>\n"
    )
    write_text_atomic(path, xml)


def write_junit(path: str | Path, name: str, verdict: Verdict, seconds: float) -> None:
    """One test case per check, in the JUnit XML that CI servers display."""
    failure = "" if verdict.passed else (
        f'<failure message={quoteattr("latency regression")}>{escape(verdict.summary())}</failure>'
    )
    _junit(path, name, seconds, f"{failure}<system-out>{escape(verdict.summary())}</system-out>",
           0 if verdict.passed else 1, 0)


def write_junit_error(path: str | Path, name: str, message: str, seconds: float = 0.0) -> None:
    """The JUnit file for a check that could not run (so CI shows why instead of a missing report)."""
    _junit(path, name, seconds, f'<error message={quoteattr("check could not run")}>{escape(message)}</error>', 0, 1)


def save_baseline(path: str | Path, baseline: dict) -> None:
    write_json_atomic(path, baseline)


# -- bundles -------------------------------------------------------------------------------



def _bundle_model(bundle: Path) -> tuple[dict, RunSettings, Path]:
    manifest = verify(bundle)
    return manifest, RunSettings.of(manifest["profile"]), Path(bundle) / manifest["model"]["default"]


def check_bundle(bundle: Path, tolerance: float = 0.10, confidence: float = 0.95, rounds: int = 5,
                 baseline_path: Path | None = None) -> tuple[Verdict, RunSettings]:
    """Verdict of the bundle's default model timed here against its baseline (the manifest's, or
    ``baseline_path``), and the run settings used (the bundle's profile)."""
    manifest, profile, model = _bundle_model(bundle)
    if baseline_path is not None:
        baseline, source = read_json(baseline_path, "latency baseline"), str(baseline_path)
    else:
        baseline, source = manifest["latency_baseline"], str(Path(bundle) / MANIFEST)
    if baseline is None:
        raise MissingFileError(f"{source} has no latency baseline "
                               f"({manifest.get('latency_baseline_note') or 'none was measured'})")
    return check_regression(model, profile, baseline, tolerance, confidence, rounds, source), profile


def measure_bundle_baseline(bundle: Path, rounds: int = 5) -> dict:
    """Measure the bundle's default model here and record it as the manifest's baseline.

    The manifest lists the hashes of the other files and is itself not hashed, so the bundle
    still verifies afterwards.
    """
    manifest, profile, model = _bundle_model(bundle)
    baseline = make_baseline(model, profile, measure_samples(model, profile, rounds))
    manifest["latency_baseline"], manifest["latency_baseline_note"] = baseline, None
    write_json_atomic(Path(bundle) / MANIFEST, manifest)
    return baseline
