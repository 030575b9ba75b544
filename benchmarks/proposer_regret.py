"""Regret of the proposers on a tabular hardware benchmark (NAS-Bench-201 format): exact, in seconds.

    python benchmarks/proposer_regret.py --benchmark ../shared/benchmarks/nb201-hw.csv.gz
        [--datasets cifar10,cifar100] [--devices raspi4,pixel3,titan_rtx_1] [--seeds 100]
        [--proposers random,evolution,prior-bo] [--evaluations 10,20,50,100] [--llm-seeds 3] [--json]

Rows: each data set, unconstrained and with a latency budget at the median latency of each
device (over every row of the file). Each proposer runs through the search's own machinery
(pathnas.search.Search with the benchmark as target: the same feasibility checks, records and
proposers as `pathnas-edge search --space nb201`). After n evaluations the pick is the best by
val (ties: lowest index); regret = best test accuracy in the feasible set minus the pick's test
accuracy, in points; mean ± standard error over seeds. Also the wall time of a proposal (ms, mean
over every proposal of every row and seed: it depends on the machine, the regret does not). The feasible set is the connected cells
within the budget: a cell that computes nothing is never proposed (the benchmark README's random
baseline also draws them, so its figures are a little higher than the random row here).

The LLM proposers run too when an endpoint is configured (OPENAI_API_KEY or OPENAI_BASE_URL;
--llm-model), over --llm-seeds seeds and at most 20 evaluations (they cost money and time).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pathnas.search import Budgets, EvolutionProposer, PriorGuidedProposer, RandomProposer, Search
from pathnas.search.tabular import BenchmarkLatency, TabularTarget, benchmark_columns

EVALUATIONS = "10,20,50,100"
OFFLINE = {"random": RandomProposer, "evolution": EvolutionProposer, "prior-bo": PriorGuidedProposer}
GOAL = 0.5  # the default's regret at 10 and 20 evaluations at most half of random's


def regret_curve(target: TabularTarget, budget_ms: float | None, proposer, seed: int, n: int,
                 seconds: list[float] | None = None) -> list[float]:
    """Regret of the pick by val after each of n evaluations (the wall time of each proposal is appended
    to ``seconds`` when given)."""
    table = target.table
    search = Search(target, BenchmarkLatency(table), Budgets(budget_ms, None), seed=seed)
    feasible = table.connected & (table.latency <= budget_ms if budget_ms is not None else True)
    best_test = float(table.test[feasible].max())
    curve, pick = [], None
    for _ in range(n):
        start = time.perf_counter()
        arch = proposer.propose(search.ctx)
        if seconds is not None:
            seconds.append(time.perf_counter() - start)
        record = search.evaluate(arch, proposer.name)
        row = table.row_of[record["arch"]]
        if pick is None or (table.val[row], -table.index[row]) > (table.val[pick], -table.index[pick]):
            pick = row
        curve.append(best_test - float(table.test[pick]))
    return curve


def llm_proposers(seed: int, model: str, folder: Path) -> dict:
    from pathnas.search import ChatClient, LLMProposer, LLMRankProposer, Transcript

    def client(name):
        return ChatClient(model, transcript=Transcript(folder / f"{name}-{seed}.jsonl"))

    return {"llm": LLMProposer(client("llm"), fallback=PriorGuidedProposer(seed)),
            "llm-rank": LLMRankProposer(client("llm-rank"), seed=seed, fallback=PriorGuidedProposer(seed))}


def stats(values: list[float]) -> dict:
    a = np.array(values, dtype=float)
    sem = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "sem": sem, "n": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", type=Path, required=True)
    parser.add_argument("--datasets", default=None, help="comma-separated; default: every data set in the file")
    parser.add_argument("--devices", default="raspi4,pixel3,titan_rtx_1", help="budget rows: device medians")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--proposers", default="random,evolution,prior-bo")
    parser.add_argument("--evaluations", default=EVALUATIONS, help="comma-separated n at which regret is shown")
    parser.add_argument("--llm-seeds", type=int, default=3)
    parser.add_argument("--llm-model", default="gpt-4o")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        args.evaluations = sorted({int(n) for n in args.evaluations.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--evaluations: comma-separated whole numbers, got {args.evaluations!r}")
    if not args.evaluations or args.evaluations[0] < 1:
        parser.error(f"--evaluations: numbers of evaluations of at least 1, got {args.evaluations}")
    unknown = [p for p in args.proposers.split(",") if p not in OFFLINE]
    if unknown:
        parser.error(f"--proposers: {', '.join(unknown)} unknown; allowed: {', '.join(OFFLINE)}")
    evaluations = args.evaluations

    devices = [d for d in args.devices.split(",") if d]
    datasets = args.datasets.split(",") if args.datasets else benchmark_columns(args.benchmark)[0]
    use_llm = bool(os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"))
    results, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="regret-llm-") as tmp:
        for dataset in datasets:
            for device in [None, *devices]:
                target = _target(args.benchmark, dataset, device or devices[0])
                budget = float(np.median(target.table.latency)) if device else None
                row = {"dataset": dataset, "device": device, "budget_ms": budget, "proposers": {}}
                for name in args.proposers.split(","):
                    spent = seconds.setdefault(name, [])
                    curves = [regret_curve(target, budget, OFFLINE[name](seed), seed, max(evaluations), spent)
                              for seed in range(args.seeds)]
                    row["proposers"][name] = {n: stats([c[n - 1] for c in curves]) for n in evaluations}
                if use_llm:
                    for name in ("llm", "llm-rank"):
                        curves = [regret_curve(target, budget, llm_proposers(seed, args.llm_model, Path(tmp))[name],
                                               seed, 20) for seed in range(args.llm_seeds)]
                        row["proposers"][name] = {n: stats([c[n - 1] for c in curves]) if n <= 20 else None
                                                  for n in evaluations}
                results.append(row)
                print(f"# {dataset} {device or 'unconstrained'} done", file=sys.stderr, flush=True)
    if args.json:
        ms = {name: 1000 * float(np.mean(s)) for name, s in seconds.items()}
        json.dump({"benchmark": str(args.benchmark), "seeds": args.seeds, "regret_points": results,
                   "ms_per_proposal": ms}, sys.stdout, indent=2)
        print()
        return
    print_tables(results, args)
    print("\nwall time of a proposal (ms, mean over every row and seed; depends on the machine)")
    print("| proposer  | ms/proposal |")
    print("|-----------|-------------|")
    for name, spent in seconds.items():
        print(f"| {name:<9} | {1000 * float(np.mean(spent)):>11.1f} |")


def _target(path: Path, dataset: str, device: str) -> TabularTarget:
    return TabularTarget(path, "nb201", dataset, device)


def _label(row: dict) -> str:
    return f"{row['device']}≤{row['budget_ms']:.3g}" if row["device"] else "none"


def print_tables(results: list[dict], args) -> None:
    print(f"# {args.benchmark.name}: regret in points after n evaluations: best test accuracy in the\n"
          f"# feasible set minus the test accuracy of the pick by val; mean ± standard error over\n"
          f"# {args.seeds} seeds (LLM proposers, when configured: {args.llm_seeds})")
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        print(f"\n{dataset}")
        print("| budget (ms)      | proposer  | " + " | ".join(f"n={n:<7}" for n in args.evaluations) + " |")
        print("|------------------|-----------|" + "|".join("-----------" for _ in args.evaluations) + "|")
        for r in (r for r in results if r["dataset"] == dataset):
            for name, cells in r["proposers"].items():
                shown = [f"{c['mean']:.2f}±{c['sem']:.2f}" if c else "n/a" for c in cells.values()]
                print(f"| {_label(r):<16} | {name:<9} | " + " | ".join(f"{s:<9}" for s in shown) + " |")
    if {10, 20} <= set(args.evaluations) and all("random" in r["proposers"] and "prior-bo" in r["proposers"]
                                                  for r in results):
        print(f"\nprior-bo / random regret (goal: at most {GOAL} at 10 and at 20 evaluations)")
        print("| data      | budget (ms)      | n=10 | n=20 | goal   |")
        print("|-----------|------------------|------|------|--------|")
        for r in results:
            ratio = [r["proposers"]["prior-bo"][n]["mean"] / r["proposers"]["random"][n]["mean"] for n in (10, 20)]
            print(f"| {r['dataset']:<9} | {_label(r):<16} | {ratio[0]:.2f} | {ratio[1]:.2f} | "
                  f"{'met' if max(ratio) <= GOAL else 'MISSED':<6} |")


if __name__ == "__main__":
    main()
