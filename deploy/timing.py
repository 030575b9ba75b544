"""The timing protocol: warm-up by count and by time, repeated samples, median and p90.

Pure Python + numpy (no torch), so the torch-free deployment path can use it too.

A sample times ``inner`` back-to-back calls and divides, where ``inner`` is chosen so that
one sample lasts at least ``min_sample_s``: a 20 µs block timed one call at a time would
measure the clock more than the block. Outliers (beyond Q3 + 3 IQR, e.g. a preempted
sample) are clipped before the mean and standard deviation; the median and p90 are
robust as they are. ``sync`` is called before each clock read (CUDA synchronisation).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class TimingResult:
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int  # samples kept
    inner: int  # calls per sample
    clipped: int  # outlier samples dropped from mean/std
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self, with_samples: bool = False) -> dict:
        out = asdict(self)
        if not with_samples:
            out.pop("samples_ms")
        return out


def time_callable(
    fn: Callable[[], object],
    warmup_runs: int = 10,
    warmup_s: float = 0.2,
    repeats: int = 30,
    min_sample_s: float = 0.002,
    max_inner: int = 1000,
    sync: Callable[[], None] | None = None,
) -> TimingResult:
    """Time ``fn()`` and return per-call latency statistics in milliseconds."""
    if repeats < 3:
        raise ValueError(f"repeats {repeats}: at least 3 samples are needed for a median and p90")
    sync = sync or (lambda: None)
    # Warm-up: at least warmup_runs calls AND at least warmup_s seconds (caches, JIT, clocks).
    start = time.perf_counter()
    runs = 0
    while runs < warmup_runs or time.perf_counter() - start < warmup_s:
        fn()
        runs += 1
    sync()
    single_s = max((time.perf_counter() - start) / runs, 1e-9)
    inner = int(min(max_inner, max(1, np.ceil(min_sample_s / single_s))))
    samples = np.empty(repeats)
    for i in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples[i] = (time.perf_counter() - t0) / inner * 1e3
    q1, q3 = np.percentile(samples, [25, 75])
    kept = samples[samples <= q3 + 3 * (q3 - q1)]
    return TimingResult(
        median_ms=float(np.median(samples)),
        p90_ms=float(np.percentile(samples, 90)),
        mean_ms=float(kept.mean()),
        std_ms=float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
        min_ms=float(samples.min()),
        runs=int(kept.size),
        inner=inner,
        clipped=int(samples.size - kept.size),
        samples_ms=[float(s) for s in samples],
    )


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    repeats: int = 100,
    warmup_runs: int = 10,
    warmup_s: float = 0.2,
    min_sample_s: float = 0.002,
    max_inner: int = 1000,
) -> list[list[float]]:
    """Per-call latency samples (ms) of several callables timed in alternation, one list per callable.

    Sample i of every callable is taken back to back (the order rotates so none always goes
    first), so a change of the machine's speed during the run touches all of them alike: the
    ratio of sample i of one to sample i of another is free of it. Each callable is warmed up
    and gets its own ``inner`` call count, as in ``time_callable``.
    """
    if repeats < 3:
        raise ValueError(f"repeats {repeats}: at least 3 samples are needed for a median and p90")
    inner = []
    for fn in fns:
        start, runs = time.perf_counter(), 0
        while runs < warmup_runs or time.perf_counter() - start < warmup_s:
            fn()
            runs += 1
        single_s = max((time.perf_counter() - start) / runs, 1e-9)
        inner.append(int(min(max_inner, max(1, np.ceil(min_sample_s / single_s)))))
    samples = [[0.0] * repeats for _ in fns]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            fn, n = fns[j], inner[j]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[j][i] = (time.perf_counter() - t0) / n * 1e3
    return samples
