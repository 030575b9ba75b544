"""Latency predictor accuracy on this host: measure the tables, predict held-out subnets.

    python benchmarks/latency_predictor.py [--device cpu] [--config all|paper-width0.5-128|demo]
                                           [--subnets 40] [--fit-subnets 10] [--rounds 3] [--save] [--json]
                                           [--threads N --out TABLE.json]

For each ShuffleNet configuration (by default both: the paper's 20-layer space CPU-sized, and
the 5-layer demo that `pathnas-edge pipeline` trains), measures through the device's runtime
on THIS machine every distinct part plus `--subnets` random subnets end to end (interleaved
rounds, many calls per sample: deploy/timing.py time_in_rounds), fits the overhead on the
first `--fit-subnets`, and prints
nn-Meter's figures for the held-out rest: RMSE, RMSPE, MAPE and the share within ±5/10/15 %.
`--save` writes each table where the package ships measured tables
(hardware_profiles/tables/<device>/<space>-<config digest>.json); commit them with their metadata.
Measure on a quiet machine: other load inflates end-to-end runs and small parts unequally.
`--threads N` times with N runtime threads instead of the profile's; such a table is not the profile's,
so it is written only to `--out` (one configuration), e.g. the 1-thread table of latency_calibration.py --load.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pathnas.pipeline import DEMO_SPACE
from pathnas.profiling import load_profile, measure_table, save_table
from pathnas.profiling.tables import table_filename
from pathnas.spaces import build_supernet, space_config

CONFIGS = {
    # the paper's 20-layer space, CPU-sized: half width, 128 px
    "paper-width0.5-128": dict(input_size=128, width_mult=0.5, num_classes=4),
    # what `make demo` / `pathnas-edge pipeline` pretrain on this machine (4 synthetic classes)
    "demo": {**{k: v for k, v in DEMO_SPACE.items() if k != "space"}, "num_classes": 4},
}
REPO = Path(__file__).resolve().parent.parent


def measure(profile, name: str, args) -> dict:
    torch.manual_seed(0)
    net = build_supernet(space_config("shufflenet", **CONFIGS[name]))
    start = time.perf_counter()
    table = measure_table(net, profile, subnets=args.subnets, fit_subnets=args.fit_subnets, rounds=args.rounds)
    seconds = time.perf_counter() - start
    path = None
    if args.out:
        path = save_table(table, args.out).resolve()
    elif args.save:
        path = REPO / "hardware_profiles" / "tables" / profile.name / table_filename(table["space_config"])
        save_table(table, path)
    latency = [r["measured_median_ms"] for r in table["end_to_end"]]
    return {"config": name, "seconds": seconds, "parts": len(table["parts"]), "accuracy": table["accuracy"],
            "overhead": table["overhead"], "measured_ms_range": [min(latency), max(latency)],
            "table": (str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)) if path else None, "metadata": table["metadata"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="all", choices=["all", *CONFIGS])
    parser.add_argument("--subnets", type=int, default=40)
    parser.add_argument("--fit-subnets", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=None, help="default: the tables' protocol (TimingProtocol)")
    parser.add_argument("--save", action="store_true", help="write the tables into hardware_profiles/tables/")
    parser.add_argument("--threads", type=int, help="runtime threads (default: the profile's); needs --out")
    parser.add_argument("--out", type=Path, help="write the table here (one --config) instead of --save's place")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads and not args.out or args.out and (args.save or args.config == "all"):
        parser.error("--threads needs --out; --out takes one --config and no --save")

    profile = load_profile(args.device)
    if args.threads:
        profile = profile.model_copy(update={"threads": args.threads})
    results = [measure(profile, name, args) for name in (CONFIGS if args.config == "all" else [args.config])]
    if args.json:
        json.dump({"device": profile.name, "results": results}, sys.stdout, indent=2)
        print()
        return
    meta = results[0]["metadata"]
    print(f"# {profile.name} ({profile.runtime}, {profile.threads} threads, batch {profile.batch_size}) on "
          f"{meta['cpu_model']}; {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}")
    for r in results:
        o = r["overhead"]
        print(f"# shufflenet {r['config']}: {r['parts']} distinct parts, {o['fit_subnets']} subnets fit the overhead "
              f"({o['model']}: scale {o['scale']:.3f}, offset {o['offset_ms']:.4f} ms); subnets measured "
              f"{r['measured_ms_range'][0]:.3f} to {r['measured_ms_range'][1]:.3f} ms; {r['seconds']:.0f} s"
              + (f"; table written to {r['table']}" if r["table"] else ""))
    print("| config | held-out subnets | RMSE ms | RMSPE % | MAPE % | within ±5% | within ±10% | within ±15% |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        a = r["accuracy"]
        print(f"| {r['config']} | {a['subnets']} | {a['rmse_ms']:.4f} | {a['rmspe_pct']:.2f} | {a['mape_pct']:.2f} | "
              f"{a['within_5_pct']:.0f}% | {a['within_10_pct']:.0f}% | {a['within_15_pct']:.0f}% |")


if __name__ == "__main__":
    main()
