"""Does `regress` cry wolf, and does it still catch a real slowdown? On this machine, with real timings.

    python benchmarks/regress_stability.py [--run RUN | --model MODEL.onnx] [--device cpu] [--checks 13] [--json]

A baseline of the model is measured once (the model and the fixed reference model bundles carry,
timed in alternation, as `package` does). Then ``--checks`` checks, each with fresh runtime
sessions as a later `regress` would have, are timed in each scenario and
judged both ways, on the same samples: the absolute comparison `regress` used to make (the model's
latency now against then) and the reference-normalised one it makes now (deploy/regress.py):
- same model, as it is: every REGRESSED verdict is a false alarm;
- the same while other processes keep every core busy (busy neighbours: contention, which slows
  models unevenly, the worst case for any normalisation): every REGRESSED verdict is a false alarm;
- a model --factor (1.75) x slower (needs --run: of the run's model and its supernet's slowest
  path, each exported at the run's input size and larger ones, the one measured nearest that
  factor beside the model; its measured ratio is printed), judged against the model's baseline, as
  a new release against the last one's: every REGRESSED verdict is a detection. (A busy wait after each call is no stand-in: it competes with the
  runtime's own spinning worker threads and slows the reference model as much as the model.)
Timings depend on the machine and its load: run it on a quiet machine for figures to quote.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pathnas.deploy.regress_stats import CONFIDENCE, ROUND_SIZE, ROUNDS, TOLERANCE


def _hog(stop) -> None:  # a process that keeps one core busy until told to stop
    while not stop.is_set():
        sum(range(10_000))


class Hogs:
    """Keep every core busy with other processes while inside."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.stop = multiprocessing.Event()
        self.procs = [multiprocessing.Process(target=_hog, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(5)


def slower_model(run: Path, model: Path, device: str, factor: float, folder: Path) -> tuple[Path, str, float]:
    """A model measured ``factor`` x as slow as the run's: of the run's model and its supernet's slowest
    path (by the latency table), each exported at the run's input size and at larger ones (a new
    release that takes larger tiles), the one whose latency timed here beside the model is nearest
    ``factor`` x the model's. Returns its file, a description and the measured ratio. (The demo
    space's slowest path is only ~1.3x the demo model, too little for a 1.75x check.)"""
    import torch

    from pathnas.deploy.runtimes import open_profile_runner
    from pathnas.deploy.timing import time_interleaved
    from pathnas.onnx import export_onnx
    from pathnas.pipeline import RunLayout
    from pathnas.profiling import load_profile, predictor_for
    from pathnas.subnet import load_subnet
    from pathnas.train import load_supernet

    layout = RunLayout(run)
    supernet, _ = load_supernet(layout.supernet)
    _, meta = load_subnet(layout.model_for_export())
    profile = load_profile(device)
    predictor = predictor_for(profile, supernet)
    gen = torch.Generator().manual_seed(0)
    slowest = max((supernet.sample(gen) for _ in range(400)), key=predictor.predict_ms)
    side = supernet.example_input().shape[-1]
    candidates = {}
    for arch in {a.code: a for a in (supernet.check(meta["arch"]), slowest)}.values():
        for scale in (1.0, 1.25, 1.5, 1.75, 2.0):
            size = int(round(side * scale / 8) * 8)
            if arch.code == meta["arch"] and size == side:
                continue  # the model itself
            out = folder / f"candidate-{arch.code}-{size}.onnx"
            export_onnx(supernet.extract(arch).eval(), out, (1, 3, size, size), exporters=("legacy",))
            candidates[f"{arch.code} at {size} px"] = out
    runners = [open_profile_runner(p, profile.runtime, profile.threads, profile.precision)
               for p in (model, *candidates.values())]
    try:
        inputs = [np.zeros(r.fixed_input_shape(profile.batch_size), np.float32) for r in runners]
        samples = time_interleaved([lambda r=r, x=x: r.run(x) for r, x in zip(runners, inputs)], repeats=30)
    finally:
        for r in runners:
            r.close()
    ratios = [float(np.median(np.divide(s, samples[0]))) for s in samples[1:]]
    best = int(np.argmin([abs(np.log(r / factor)) for r in ratios]))
    name = list(candidates)[best]
    return candidates[name], name, ratios[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("demo"), help="a run directory (its export/model.onnx)")
    parser.add_argument("--model", type=Path, default=None, help="an ONNX model instead of the run's")
    parser.add_argument("--device", default="cpu", help="hardware profile of this machine")
    parser.add_argument("--checks", type=int, default=13, help="checks per scenario")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timing rounds per check ({ROUND_SIZE} pairs "
                                                                   "each), as regress")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--factor", type=float, default=1.75,
                        help="how much slower the other model is meant to be (predicted; its measured ratio is printed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = args.model or args.run / "export" / "model.onnx"
    if not model.is_file():
        raise SystemExit(f"{model} does not exist: run `make demo` first, or pass --run / --model")

    from pathnas.deploy.machine import cpu_model
    from pathnas.deploy.regress import measure_with_reference
    from pathnas.deploy.regress_stats import compare, compare_normalized
    from pathnas.profiling.reference import write_reference_model
    from pathnas.profiling import load_profile

    profile = load_profile(args.device).device

    def measure(reference: Path, current: Path = model) -> tuple[list[float], list[float]]:
        """One check as `regress` times it (deploy.regress.measure_with_reference)."""
        return measure_with_reference(current, reference, profile, args.rounds)

    with tempfile.TemporaryDirectory() as tmp:
        reference = write_reference_model(Path(tmp) / "reference.onnx")
        base_model, base_ref = measure(reference)
        # (model timed, processes keeping every core busy meanwhile)
        scenarios = {"same model": (model, 0), "same model, busy neighbours": (model, os.cpu_count())}
        if args.model is None:
            slower, code, _ = slower_model(args.run, model, args.device, args.factor, Path(tmp))
            slow_model, slow_ref = measure(reference, slower)
            # against the reference timed beside it, as the verdict judges: the machine's speed cancels
            measured = float(np.median(np.divide(slow_model, slow_ref)) / np.median(np.divide(base_model, base_ref)))
            scenarios[f"a model {measured:.2f}x slower ({code})"] = (slower, 0)
        rows = []
        for name, (current, hogs) in scenarios.items():
            verdicts = {"absolute": 0, "reference": 0}
            machine, ratios = [], []
            for _ in range(args.checks):
                if hogs:
                    with Hogs(hogs):
                        cur_model, cur_ref = measure(reference, current)
                else:
                    cur_model, cur_ref = measure(reference, current)
                absolute = compare(cur_model, base_model, args.tolerance, CONFIDENCE)
                normalized = compare_normalized(cur_model, cur_ref, base_model, base_ref, args.tolerance, CONFIDENCE,
                                                round_size=ROUND_SIZE)
                verdicts["absolute"] += not absolute.passed
                verdicts["reference"] += not normalized.passed
                machine.append(normalized.machine_ratio)
                ratios.append(normalized.ratio)
            rows.append({"scenario": name, "checks": args.checks, "regressed_absolute": verdicts["absolute"],
                         "regressed_reference": verdicts["reference"],
                         "machine_ratio_median": float(np.median(machine)),
                         "normalized_ratio_median": float(np.median(ratios))})
    result = {"model": str(model), "device": profile.name, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
              "tolerance": args.tolerance, "rounds": args.rounds,
              "baseline_median_ms": {"model": float(np.median(base_model)), "reference": float(np.median(base_ref))},
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"model {model} on {profile.name} ({cpu_model()}, {os.cpu_count()} cores); baseline median "
          f"{result['baseline_median_ms']['model']:.3f} ms, reference {result['baseline_median_ms']['reference']:.3f} ms")
    print(f"REGRESSED verdicts out of {args.checks} checks (tolerance +{100 * args.tolerance:.0f}%, "
          f"{100 * CONFIDENCE:.0f}% CI):\n")
    print("| scenario | absolute | vs reference | reference x | model/ref ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['regressed_absolute']} | {r['regressed_reference']} | "
              f"{r['machine_ratio_median']:.2f} | {r['normalized_ratio_median']:.3f} |")
    print("\nFalse alarms in the first two rows, detections in the last. 'reference x': how much slower the "
          "reference\nmodel ran than at the baseline (the machine's speed), 'model/ref ratio': the normalised "
          "ratio the\nverdict judges; medians over the checks.")


if __name__ == "__main__":
    sys.exit(main())
