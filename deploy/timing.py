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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np

from pathnas.errors import ConfigError


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
    inner = calls_per_sample(fn, warmup_runs, warmup_s, min_sample_s, max_inner, sync)
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


def calls_per_sample(fn: Callable[[], object], warmup_runs: int = 10, warmup_s: float = 0.2,
                     min_sample_s: float = 0.002, max_inner: int = 1000,
                     sync: Callable[[], None] | None = None) -> int:
    """Warm ``fn`` up (at least ``warmup_runs`` calls AND ``warmup_s`` seconds) and return how many
    back-to-back calls make one sample last at least ``min_sample_s``."""
    sync = sync or (lambda: None)
    start, runs = time.perf_counter(), 0
    while runs < warmup_runs or time.perf_counter() - start < warmup_s:
        fn()
        runs += 1
    sync()
    # The call's time from the fastest of a few short bursts after the warm-up: the warm-up's own
    # average carries its first slow calls and any preemption, and would give too few calls per sample.
    batch, best = max(1, runs // 10), float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / batch)
    single_s = max(best, 1e-9)
    return int(min(max_inner, max(1, np.ceil(min_sample_s / single_s))))


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    repeats: int = 100,
    warmup_runs: int = 10,
    warmup_s: float = 0.2,
    min_sample_s: float = 0.002,
    max_inner: int = 1000,
    sync: Callable[[], None] | None = None,
    inner: Sequence[int] | None = None,
    advance: Callable[[], None] | None = None,
) -> list[list[float]]:
    """Per-call latency samples (ms) of several callables timed in alternation, one list per callable.

    Sample i of every callable is taken back to back (the order rotates so none always goes
    first), so a change of the machine's speed during the run touches all of them alike: the
    ratio of sample i of one to sample i of another is free of it. Each callable is warmed up
    and gets its own ``inner`` call count, as in ``time_callable`` (or the counts given).
    ``advance`` is called after each pass over all callables (a progress bar).
    """
    if repeats < 3:
        raise ValueError(f"repeats {repeats}: at least 3 samples are needed for a median and p90")
    sync = sync or (lambda: None)
    if inner is None:
        inner = [calls_per_sample(fn, warmup_runs, warmup_s, min_sample_s, max_inner, sync) for fn in fns]
    samples = [[0.0] * repeats for _ in fns]
    for i in range(repeats):
        for k in range(len(fns)):
            j = (i + k) % len(fns)
            fn, n = fns[j], inner[j]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[j][i] = (time.perf_counter() - t0) / n * 1e3
        if advance:
            advance()
    return samples


def median_polish(log_times: np.ndarray, sweeps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Tukey's median polish of a callables x passes matrix of log times: log t[i, p] ~ a[i] + b[p].

    ``a`` is each callable's log time at the machine's typical speed, ``b`` each pass's speed
    (centred on its median, 0): a pass the machine ran 1.5x slower moves its ``b``, not the
    callables' ``a``. Medians throughout, so a preempted sample moves nothing."""
    residual = np.array(log_times, dtype=float)
    rows, cols = np.zeros(residual.shape[0]), np.zeros(residual.shape[1])
    for _ in range(sweeps):
        r = np.median(residual, axis=1)
        residual -= r[:, None]
        rows += r
        c = np.median(residual, axis=0)
        residual -= c[None, :]
        cols += c
    shift = np.median(cols)
    return rows + shift, cols - shift


@dataclass(frozen=True)
class TimingProtocol:
    """How a latency table's figures are timed (``time_in_rounds``), its defaults in this one place.

    A latency pack's manifest carries it (``to_dict``) so the device times as the host asked, and a
    table can say how it was timed; ``from_dict`` reads one back (keys left out take the defaults: a
    pack made before a field existed stays readable)."""

    rounds: int = 3  # interleaved passes over every callable
    repeats: int = 10  # samples per callable and pass
    min_sample_s: float = 0.005  # a sample's least duration (several calls when one is shorter)
    warmup_s: float = 0.05  # warm-up per callable before its samples

    def __post_init__(self):
        if self.rounds < 1 or self.repeats < 3 or self.min_sample_s < 0 or self.warmup_s < 0:
            raise ConfigError(f"timing protocol {self}: rounds >= 1, repeats >= 3 (a median and p90 need 3 samples), "
                              f"durations >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "TimingProtocol":
        """The protocol of a mapping (a pack's ``timing``); unknown keys are refused, missing ones default."""
        data = data or {}
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"timing: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(known)})")
        values = {}
        for key, value in data.items():
            kind = int if known[key] == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"timing.{key} {value!r} is not {'an integer' if kind is int else 'a number'}")
            values[key] = kind(value)
        return cls(**values)

    def but(self, rounds: int | None = None, repeats: int | None = None) -> "TimingProtocol":
        """This protocol with the rounds and repeats a command asked for (None: as it is)."""
        return replace(self, **{k: v for k, v in (("rounds", rounds), ("repeats", repeats)) if v is not None})


def time_in_rounds(
    fns: dict[str, Callable[[], object]],
    protocol: TimingProtocol = TimingProtocol(),
    seed: int = 0,
    sync: Callable[[], None] | None = None,
    advance: Callable[[], None] | None = None,
) -> dict[str, dict]:
    """The protocol of latency tables: every callable timed in ``protocol.rounds`` interleaved passes
    (``time_interleaved``), each pass in a new shuffled order, ``protocol.repeats`` samples per pass.

    A sample lasts at least ``min_sample_s`` (5 ms by default: a 0.01 ms part is called hundreds of
    times per sample, so the clock and the scheduler's tick are a small share of it). A pass takes
    one sample of every callable back to back, so each pass sees the machine at one speed; that
    speed is taken out by a median polish of the callables x passes matrix (``median_polish``),
    and each callable's figure is its time at the machine's typical speed over the run. A machine
    whose speed changes during the run (this project's 2-core VM ran some rounds 1.5x slower than
    others) then moves every figure alike or not at all, instead of each by how many of its
    samples fell in the slow spell. With one callable the figure is the plain median.
    ``advance`` is called once per warm-up and once per pass over all callables.
    """
    import random

    names = list(fns)
    inner = {}
    for name in names:
        inner[name] = calls_per_sample(fns[name], warmup_s=protocol.warmup_s, min_sample_s=protocol.min_sample_s,
                                       sync=sync)
        if advance:
            advance()
    shuffler, per_round = random.Random(seed), {name: [] for name in names}
    for _ in range(protocol.rounds):
        order = names[:]
        shuffler.shuffle(order)
        samples = time_interleaved([fns[n] for n in order], repeats=protocol.repeats, sync=sync,
                                   inner=[inner[n] for n in order], advance=advance)
        for name, s in zip(order, samples):
            per_round[name].append(s)
    log_times = np.log(np.array([np.concatenate(per_round[name]) for name in names]))
    level, speed = median_polish(log_times)
    out = {}
    for k, name in enumerate(names):
        steadied = np.exp(log_times[k] - speed)  # this callable's samples at the typical speed
        out[name] = {"median_ms": float(np.exp(level[k])), "p90_ms": float(np.percentile(steadied, 90)),
                     "rounds_median_ms": [round(float(np.median(s)), 6) for s in per_round[name]],
                     "runs": int(steadied.size), "inner": inner[name]}
    return out
