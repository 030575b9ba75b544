"""Latency predictor accuracy on this host: measure the table, predict held-out subnets.

    python benchmarks/latency_predictor.py [--device cpu] [--config paper-width0.5-128|demo]
                                           [--subnets 40] [--fit-subnets 10] [--save] [--json]

Measures, through the device's runtime on THIS machine, every part of the chosen ShuffleNet
configuration plus `--subnets` random subnets end to end (interleaved rounds; see
profiling/tables.py), fits the overhead on the first `--fit-subnets`, and prints nn-Meter's
figures for the held-out rest: RMSE, RMSPE, MAPE and the share within ±5/10/15 %.
`--save` writes the table where the package ships measured tables
(hardware_profiles/tables/<device>/), so commit it with its metadata.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pathnas.profiling import load_profile, measure_table, save_table
from pathnas.profiling.tables import table_filename
from pathnas.spaces import build_supernet, space_config

CONFIGS = {
    # the paper's 20-layer space, CPU-sized: half width, 128 px
    "paper-width0.5-128": dict(input_size=128, width_mult=0.5, num_classes=4),
    # what `make demo` / `pathnas-edge pipeline` pretrain on this machine
    "demo": dict(input_size=64, width_mult=0.5, num_classes=4, stage_repeats=[1, 1, 2, 1]),
}
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="paper-width0.5-128", choices=sorted(CONFIGS))
    parser.add_argument("--subnets", type=int, default=40)
    parser.add_argument("--fit-subnets", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save", action="store_true", help="write the table into hardware_profiles/tables/")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    profile = load_profile(args.device)
    torch.manual_seed(0)
    net = build_supernet(space_config("shufflenet", **CONFIGS[args.config]))
    start = time.perf_counter()
    table = measure_table(net, profile, subnets=args.subnets, fit_subnets=args.fit_subnets, rounds=args.rounds)
    seconds = time.perf_counter() - start
    if args.save:
        path = REPO / "hardware_profiles" / "tables" / profile.name / table_filename(table["space_config"])
        save_table(table, path)
    acc, meta = table["accuracy"], table["metadata"]
    if args.json:
        json.dump({"device": profile.name, "config": args.config, "seconds": seconds, "accuracy": acc,
                   "overhead": table["overhead"], "metadata": meta}, sys.stdout, indent=2)
        print()
        return
    print(f"# {profile.name} ({profile.runtime}, {profile.threads} threads, batch {profile.batch_size}) on "
          f"{meta['cpu_model']}; {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}")
    print(f"# shufflenet {args.config}: {len(table['parts'])} distinct parts, {args.fit_subnets} subnets fit the "
          f"overhead ({table['overhead']['model']}: scale {table['overhead']['scale']:.3f}, offset "
          f"{table['overhead']['offset_ms']:.4f} ms), {acc['subnets']} held out; {seconds:.0f} s")
    lat = [r["measured_median_ms"] for r in table["end_to_end"]]
    print(f"# measured subnet latency: {min(lat):.3f} to {max(lat):.3f} ms")
    print("| held-out subnets | RMSE ms | RMSPE % | MAPE % | within ±5% | within ±10% | within ±15% |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {acc['subnets']} | {acc['rmse_ms']:.4f} | {acc['rmspe_pct']:.2f} | {acc['mape_pct']:.2f} | "
          f"{acc['within_5_pct']:.0f}% | {acc['within_10_pct']:.0f}% | {acc['within_15_pct']:.0f}% |")
    if args.save:
        print(f"table written to {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
