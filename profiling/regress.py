"""Latency regression checks on the target: is this model now slower than its baseline?

Judged with repeated measurements and a noise-aware comparison: the bootstrap confidence
interval of the ratio of medians (current / baseline). The check fails only when the whole
interval lies above 1 + tolerance, i.e. when the slowdown is beyond the tolerance with the
stated confidence, so one noisy run does not fail a hospital's CI.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from pathnas.io import write_json_atomic, write_text_atomic

from .profiles import HardwareProfile, cpu_model
from .timing import time_callable

BASELINE_SCHEMA = "pathnas-latency-baseline/1"


class BaselineMismatchError(ValueError):
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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def measure_samples(path: str | Path, profile: HardwareProfile, rounds: int = 5, repeats: int = 20) -> list[float]:
    """Per-call latency samples (ms per image) from several timing rounds of a model file
    (.onnx, OpenVINO .xml, TensorRT .engine) in the profile's runtime, at the profile's batch size."""
    from pathnas.export.runtimes import open_runner

    runner = open_runner(path, profile.runtime, profile.threads, profile.precision)
    try:
        x = np.random.default_rng(0).standard_normal(runner.fixed_input_shape(profile.batch_size), dtype=np.float32)
        samples: list[float] = []
        for _ in range(rounds):
            samples += time_callable(lambda: runner.run(x), repeats=repeats).samples_ms
    finally:
        runner.close()
    return [s / profile.batch_size for s in samples]


def make_baseline(path: str | Path, profile: HardwareProfile, samples_ms: list[float]) -> dict:
    return {
        "schema": BASELINE_SCHEMA,
        "device": profile.name,
        "runtime": profile.runtime,
        "precision": profile.precision,
        "threads": profile.threads,
        "batch_size": profile.batch_size,
        "model": Path(path).name,
        "model_sha256": file_sha256(path),
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "median_ms": float(np.median(samples_ms)),
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "samples_ms": [round(s, 6) for s in samples_ms],
    }


def check_baseline(baseline: dict, profile: HardwareProfile, source: str = "baseline") -> None:
    if baseline.get("schema") != BASELINE_SCHEMA:
        raise ValueError(f"{source}: not a latency baseline (schema {BASELINE_SCHEMA})")
    for key, expected in (("device", profile.name), ("runtime", profile.runtime), ("threads", profile.threads),
                          ("batch_size", profile.batch_size)):
        if baseline.get(key) != expected:
            raise BaselineMismatchError(
                f"{source} was measured with {key}={baseline.get(key)!r}, but this check runs with {key}={expected!r}; "
                f"measure a baseline here with --update-baseline"
            )
    samples = baseline.get("samples_ms")
    if not isinstance(samples, list) or len(samples) < 5 or not all(isinstance(v, (int, float)) and v > 0 for v in samples):
        raise ValueError(f"{source}: samples_ms must list at least 5 positive latencies (ms); re-measure it with "
                         f"--update-baseline")


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


def check_regression(path: str | Path, profile: HardwareProfile, baseline: dict, tolerance: float = 0.10,
                     confidence: float = 0.95, rounds: int = 5, source: str = "baseline") -> Verdict:
    """Measure ``path`` here and judge it against ``baseline`` (a baseline file's contents, or the
    ``latency_baseline`` of a bundle manifest; ``source`` names it in errors). Raises
    BaselineMismatchError when the baseline was measured on another device or runtime."""
    check_baseline(baseline, profile, source)
    return compare(measure_samples(path, profile, rounds), baseline["samples_ms"], tolerance, confidence)


def write_junit(path: str | Path, name: str, verdict: Verdict, seconds: float) -> None:
    """One test case per check, in the JUnit XML that CI servers display."""
    failure = "" if verdict.passed else (
        f'<failure message={quoteattr("latency regression")}>{escape(verdict.summary())}</failure>'
    )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="pathnas-latency" tests="1" failures="{0 if verdict.passed else 1}" time="{seconds:.3f}">\n'
        f'  <testcase classname="pathnas.latency" name={quoteattr(name)} time="{seconds:.3f}">'
        f'{failure}<system-out>{escape(verdict.summary())}</system-out></testcase>\n'
        "</testsuite>\n"
    )
    write_text_atomic(path, xml)


def save_baseline(path: str | Path, baseline: dict) -> None:
    write_json_atomic(path, baseline)
