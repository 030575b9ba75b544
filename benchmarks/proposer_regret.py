"""Regret of the proposers on a space small enough to evaluate every path once.

    python benchmarks/proposer_regret.py [--seeds 20] [--cache benchmarks/.regret_table.json]
                                         [--transcript RUN/search/transcript.jsonl] [--json]

A ShuffleNet supernet with one choice layer per stage (4^4 = 256 paths, input 32, width
0.5) is pretrained briefly on the synthetic data; then every path is evaluated once with
inherited weights and BN recalibration (the table is cached as JSON). Proposers run against
that table: regret = best accuracy in the space minus the best accuracy found, after 10, 50
and 100 evaluations: mean and standard error over seeds, and the share of seeds that found the
optimum. Evolution's first 50 evaluations are its random initial population (population 50),
drawn from the same generator as `random`, so the two agree up to 50 by construction. A
replayed LLM transcript (`--transcript`) is scored the same way from the architectures it proposed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pathnas.data import build_loaders, generate
from pathnas.io import read_jsonl, write_json_atomic
from pathnas.search import EvolutionProposer, RandomProposer, SearchContext
from pathnas.spaces import build_supernet, space_config
from pathnas.train import PretrainConfig, evaluate_architecture, pretrain

BUDGETS = (10, 50, 100)
KNOBS = dict(input_size=32, width_mult=0.5, num_classes=4, stage_repeats=[1, 1, 1, 1])


def build_table(path: Path) -> dict[str, float]:
    """Top-1 (val) of every path, with inherited weights after BN recalibration."""
    if path.exists():
        return json.loads(path.read_text())["accuracy"]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        generate(data_dir, "classify", n_per_class=120, image_size=32, seed=0)
        cfg = PretrainConfig(data=data_dir, run_dir=Path(tmp) / "run", epochs=15, batch_size=32, lr=0.02, workers=0,
                             eval_paths=0, device="cpu", mixup_alpha=0, cutmix_alpha=0)
        supernet = pretrain(space_config("shufflenet", **KNOBS), cfg, progress=False).supernet.eval()
        data = build_loaders(data_dir, 32, 64)
        space = supernet.space
        codes = ["".join(s) for s in np.array(np.meshgrid(*[[o.symbol for o in d.options] for d in space.decisions]))
                 .T.reshape(-1, len(space))]
        accuracy = {}
        for code in codes:
            m = evaluate_architecture(supernet, code, data.calib, data.val, data.num_classes, torch.device("cpu"), 128)
            accuracy[code] = m["top1_pct"]
    write_json_atomic(path, {"space": KNOBS, "paths": len(accuracy), "accuracy": accuracy})
    return accuracy


def run_proposer(proposer, accuracy: dict[str, float], space, evaluations: int) -> list[float]:
    """Best-so-far accuracy after each evaluation, looking evaluations up in the table."""
    ctx = SearchContext(space, feasible=lambda arch: True)
    best, curve = -1.0, []
    for i in range(evaluations):
        arch = proposer.propose(ctx)
        acc = accuracy[arch.code]
        ctx.history.append({"iteration": i, "arch": arch.code, "metric": acc, "meets_budgets": True})
        best = max(best, acc)
        curve.append(best)
    return curve


def regret_at(curve: list[float], optimum: float) -> dict[int, float | None]:
    return {n: (optimum - curve[n - 1]) if len(curve) >= n else None for n in BUDGETS}


def summarize(regrets: list[float]) -> dict:
    values = np.array(regrets)
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "sem": sem, "found_optimum": float(np.mean(values == 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".regret_table.json")
    parser.add_argument("--transcript", type=Path, default=None, help="an LLM search's evaluations.jsonl or transcript")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    accuracy = build_table(args.cache)
    space = build_supernet(space_config("shufflenet", **KNOBS)).space
    optimum = max(accuracy.values())
    results = {}
    for name, make in (("random", RandomProposer), ("evolution", EvolutionProposer)):
        regrets = [regret_at(run_proposer(make(seed), accuracy, space, max(BUDGETS)), optimum) for seed in range(args.seeds)]
        results[name] = {n: summarize([r[n] for r in regrets]) for n in BUDGETS}
    if args.transcript:
        evaluations = args.transcript.parent / "evaluations.jsonl" if args.transcript.name != "evaluations.jsonl" else args.transcript
        codes = [r["arch"] for r in read_jsonl(evaluations)]
        curve = list(np.maximum.accumulate([accuracy[c] for c in codes if c in accuracy]))
        results["llm (replayed)"] = {n: None if r is None else summarize([r]) for n, r in regret_at(curve, optimum).items()}
    if args.json:
        json.dump({"paths": len(accuracy), "optimum_top1_pct": optimum, "seeds": args.seeds, "regret_pct": results},
                  sys.stdout, indent=2)
        print()
        return
    values = np.array(list(accuracy.values()))
    print(f"# {len(accuracy)} paths evaluated once (inherited weights + BN recalibration); top-1 on val: best "
          f"{optimum:.2f}, median {np.median(values):.2f}, worst {values.min():.2f}; regret in points: "
          f"mean ± standard error over {args.seeds} seeds [share of seeds that found the optimum]")
    print("| proposer | after 10 | after 50 | after 100 |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(
            "n/a" if r[n] is None else f"{r[n]['mean']:.2f} ± {r[n]['sem']:.2f} [{r[n]['found_optimum']:.0%}]"
            for n in BUDGETS) + " |")


if __name__ == "__main__":
    main()
