"""The regression decision alone, on given latency samples: is "now" slower than the baseline? numpy only.

``compare`` (absolute, medians) and ``compare_normalized`` (relative to the reference model timed
alongside; deploy/regress.py explains why) return a ``Verdict``; tests drive them with given
samples and benchmarks/regress_stability.py with real timings. The defaults of every regress
command and benchmark are the constants here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The defaults of every regress command and benchmark: the slowdown allowed, and the confidence of
# the interval that must lie wholly above 1 + TOLERANCE for a verdict of REGRESSED.
TOLERANCE = 0.10
CONFIDENCE = 0.95
ROUND_SIZE = 20  # timing pairs per round; every round opens fresh runtime sessions
ROUNDS = 10  # rounds of a baseline or a check: enough for a 20% slowdown to stand out of a busy machine's noise


@dataclass
class Verdict:
    passed: bool
    ratio: float  # current / baseline: of the model's latency relative to the reference, or absolute
    ci_low: float
    ci_high: float
    tolerance: float
    confidence: float
    current_median_ms: float  # the model's own medians
    baseline_median_ms: float
    method: str = "absolute"  # or "reference" (normalised by the reference model)
    machine_ratio: float | None = None  # the reference model's median here / in the baseline
    note: str = ""
    baseline_model: dict | None = None  # {"name", "sha256"} when the baseline was measured for another model

    def junit_properties(self) -> dict[str, str]:
        """What a CI page shows beside the test case: the baseline's model when it is another one."""
        if not self.baseline_model:
            return {}
        return {"baseline_model": self.baseline_model["name"], "baseline_model_sha256": self.baseline_model["sha256"]}

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: object, where: str) -> "Verdict":
        """A verdict from its ``as_dict`` JSON made elsewhere (a device over SSH): checked field by field,
        ValueError naming ``where`` and the field at fault."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: the verdict is not a JSON object")
        numbers = ("ratio", "ci_low", "ci_high", "tolerance", "confidence", "current_median_ms", "baseline_median_ms")
        for name in numbers:
            if not isinstance(record.get(name), (int, float)) or isinstance(record.get(name), bool):
                raise ValueError(f"{where}: the verdict's {name} is {record.get(name)!r}, not a number")
        if not isinstance(record.get("passed"), bool):
            raise ValueError(f"{where}: the verdict's passed is {record.get('passed')!r}, not true or false")
        machine = record.get("machine_ratio")
        if machine is not None and (not isinstance(machine, (int, float)) or isinstance(machine, bool)):
            raise ValueError(f"{where}: the verdict's machine_ratio is {machine!r}, not a number")
        other = record.get("baseline_model")
        if other is not None and not (isinstance(other, dict) and all(isinstance(other.get(k), str)
                                                                      for k in ("name", "sha256"))):
            raise ValueError(f"{where}: the verdict's baseline_model is not a name and a sha256")
        if record.get("method") not in ("absolute", "reference"):
            raise ValueError(f"{where}: the verdict's method is {record.get('method')!r}: allowed values are "
                             f"absolute, reference")
        return cls(passed=record["passed"], **{n: float(record[n]) for n in numbers}, method=record["method"],
                   machine_ratio=None if machine is None else float(machine), note=str(record.get("note") or ""),
                   baseline_model=None if other is None else {"name": other["name"], "sha256": other["sha256"]})

    def summary(self) -> str:
        word = "passed" if self.passed else "REGRESSED"
        ci = f"({100 * self.confidence:.0f}% CI {self.ci_low:.3f}-{self.ci_high:.3f}), tolerance +{100 * self.tolerance:.0f}%"
        head = f"{word}: median {self.current_median_ms:.3f} ms vs baseline {self.baseline_median_ms:.3f} ms"
        if self.method == "reference":
            text = (f"{head}; this machine runs the reference model at {self.machine_ratio:.2f}x its baseline "
                    f"time, so relative to it the model's ratio is {self.ratio:.3f} {ci}")
        else:
            text = f"{head}, ratio {self.ratio:.3f} {ci}"
        if self.baseline_model:
            text += (f"; the baseline belongs to another model, {self.baseline_model['name']} (sha256 "
                     f"{self.baseline_model['sha256'][:12]}): this compares the two models' speeds")
        return f"{text}; {self.note}" if self.note else text


def _bootstrap(current: np.ndarray, baseline: np.ndarray, confidence: float, resamples: int,
               seed: int) -> tuple[float, float, float]:
    """Ratio of medians (current / baseline) and its bootstrap confidence interval."""
    if current.size < 5 or baseline.size < 5:
        raise ValueError("at least 5 samples on each side are needed for a noise-aware comparison")
    rng = np.random.default_rng(seed)
    ratios = (np.median(rng.choice(current, (resamples, current.size)), axis=1)
              / np.median(rng.choice(baseline, (resamples, baseline.size)), axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ratios, [alpha, 1 - alpha])
    return float(np.median(current) / np.median(baseline)), float(low), float(high)


def compare(current_ms: list[float], baseline_ms: list[float], tolerance: float = TOLERANCE,
            confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0) -> Verdict:
    """Absolute: bootstrap CI of median(current) / median(baseline); fails when the CI is entirely above
    1 + tolerance. Sensitive to the machine's speed; ``compare_normalized`` is not."""
    cur, base = np.asarray(current_ms, float), np.asarray(baseline_ms, float)
    ratio, low, high = _bootstrap(cur, base, confidence, resamples, seed)
    return Verdict(bool(low <= 1 + tolerance), ratio, low, high, tolerance, confidence,
                   float(np.median(cur)), float(np.median(base)))


FAST_END = 0.10  # the quantile compared by compare_normalized
MIN_ROUNDS = 3  # rounds on each side to judge by rounds; fewer: by the pooled timing pairs


def compare_normalized(current_ms: list[float], current_reference_ms: list[float], baseline_ms: list[float],
                       baseline_reference_ms: list[float], tolerance: float = TOLERANCE, confidence: float = CONFIDENCE,
                       resamples: int = 2000, seed: int = 0, round_size: int | None = None) -> Verdict:
    """Relative to the reference model: the model's latency over the reference's, each at its fast end
    (10th percentile), now over the same in the baseline; fails when the whole confidence interval lies
    above 1 + tolerance.

    With ``round_size`` (samples per round, in order) and at least 3 rounds on each side, the ratio
    is taken per round and the rounds' log ratios are averaged, the interval bootstrapped over rounds:
    so it also holds the speed differences between runtime sessions, which pairs within one session do
    not show. Otherwise the timing pairs are pooled and resampled together."""
    cur, cur_ref = np.asarray(current_ms, float), np.asarray(current_reference_ms, float)
    base, base_ref = np.asarray(baseline_ms, float), np.asarray(baseline_reference_ms, float)
    if cur.shape != cur_ref.shape or base.shape != base_ref.shape:
        raise ValueError("the model and the reference need one sample each per timing pair")
    if cur.size < 5 or base.size < 5:
        raise ValueError("at least 5 samples on each side are needed for a noise-aware comparison")

    def relative(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return np.quantile(model, FAST_END, axis=-1) / np.quantile(reference, FAST_END, axis=-1)

    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    by_rounds = round_size and round_size >= 5 and min(cur.size, base.size) // round_size >= MIN_ROUNDS \
        and cur.size % round_size == 0 and base.size % round_size == 0
    if by_rounds:
        now = np.log(relative(cur.reshape(-1, round_size), cur_ref.reshape(-1, round_size)))
        then = np.log(relative(base.reshape(-1, round_size), base_ref.reshape(-1, round_size)))
        ratio = float(np.exp(now.mean() - then.mean()))
        boot = (now[rng.integers(0, now.size, (resamples, now.size))].mean(1)
                - then[rng.integers(0, then.size, (resamples, then.size))].mean(1))
        low, high = np.exp(np.quantile(boot, [alpha, 1 - alpha]))
    else:
        now, then = rng.integers(0, cur.size, (resamples, cur.size)), rng.integers(0, base.size, (resamples, base.size))
        ratios = relative(cur[now], cur_ref[now]) / relative(base[then], base_ref[then])
        low, high = np.quantile(ratios, [alpha, 1 - alpha])
        ratio = float(relative(cur, cur_ref) / relative(base, base_ref))
    return Verdict(bool(low <= 1 + tolerance), ratio, float(low), float(high), tolerance, confidence,
                   float(np.median(cur)), float(np.median(base)), method="reference",
                   machine_ratio=float(np.quantile(cur_ref, FAST_END) / np.quantile(base_ref, FAST_END)))
