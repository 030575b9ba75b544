"""Which per-item estimator makes a latency table hold on a busy machine? Every raw sample of a demo pack,
kept, then the table assembled with each estimator.

    python benchmarks/timing_estimators.py [--load] [--sample-ms 5] [--processes 3] [--work DIR] [--json]

The pack is the demo configuration's parts plus 10 fit and 24 held-out paths (as
`benchmarks/latency_split.py`). It is timed as a table is: each round in a fresh process of its own
on one shared thread pool (`pathnas.deploy.device_profile.time_pack`), one round per process, with the
raw samples (items x passes, log ms) kept. `--load` runs a CPU-bound loop beside the timing;
`--sample-ms` sets how long one sample lasts (the protocol's `min_sample_s`, 5 ms by default). Each
estimator gives an item's figure per process; the processes are merged by a median polish, as
`time_pack_in_processes` does, and the table is assembled (`assemble_table`). Printed: the share of
held-out paths predicted within ±10 % and ±5 %, and the MAPE, per estimator:
- median polish: today's protocol (`timing.time_in_rounds`);
- 25th / 10th percentile and minimum of the samples at the run's typical speed (after the polish);
- raw median: no polish.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from latency_predictor import CONFIGS
from latency_split import BUSY, net_for
from pathnas.deploy.timing import TimingProtocol, median_polish
from pathnas.io import read_json
from pathnas.profiling import load_profile
from pathnas.profiling.measure import assemble_table
from pathnas.profiling.pack import plan_table, write_pack

# One timing process: the protocol as it is, with the samples matrix it polishes kept.
CHILD = r"""
import json, sys
import pathnas.deploy.timing as timing
kept = {}
polish = timing.median_polish
def keep(log_times, sweeps=10):
    kept.setdefault("log_times", log_times.copy())
    return polish(log_times, sweeps)
timing.median_polish = keep
from dataclasses import replace
from pathnas.deploy import device_profile
pack_timing = device_profile.pack_timing  # the pack's protocol, with samples of at least argv[3] s
device_profile.pack_timing = lambda manifest, where: replace(pack_timing(manifest, where), min_sample_s=float(sys.argv[3]))
from pathnas.deploy.device_profile import time_pack
result = time_pack(sys.argv[1], rounds=1, shared_pool=True)
json.dump({"names": list(result["results"]), "log_times": kept["log_times"].tolist(),
           "other_load_cores": result["metadata"]["other_load_cores"]}, open(sys.argv[2], "w"))
"""
ESTIMATORS = ("median polish", "25th percentile", "10th percentile", "minimum", "raw median")


def per_process(log_times: np.ndarray, estimator: str) -> np.ndarray:
    """Each item's figure (ms) from one process's items x samples matrix of log times."""
    level, speed = median_polish(log_times)
    steadied = log_times - speed[None, :]  # every sample at the run's typical speed
    if estimator == "median polish":
        return np.exp(level)
    if estimator == "raw median":
        return np.exp(np.median(log_times, axis=1))
    if estimator == "minimum":
        return np.exp(steadied.min(axis=1))
    q = {"25th percentile": 25, "10th percentile": 10}[estimator]
    return np.exp(np.percentile(steadied, q, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", action="store_true", help="a CPU-bound process beside the timing")
    parser.add_argument("--sample-ms", type=float, default=5.0, help="how long one sample lasts at least")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep the pack and the samples here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="timing-estimators-") as tmp:
        work = args.work or Path(tmp)
        pack = work / "pack"
        if not (pack / "pack.json").exists():
            net = net_for(CONFIGS["demo"])
            items, reused = plan_table(net, 34, 10)
            write_pack(net, load_profile("cpu"), items, pack, reused, timing=TimingProtocol().but(rounds=args.processes))
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if args.load else None
        records = []
        try:
            for k in range(args.processes):
                out = work / f"samples-{k}.json"
                subprocess.run([sys.executable, "-c", CHILD, str(pack), str(out), str(args.sample_ms / 1e3)],
                               check=True, cwd=tempfile.gettempdir())
                records.append(json.loads(out.read_text()))
        finally:
            if busy:
                busy.kill()
                busy.wait()
        manifest = read_json(pack / "pack.json", "latency pack manifest")
        rows = []
        for estimator in ESTIMATORS:
            figures = np.log([per_process(np.array(r["log_times"]), estimator) for r in records]).T  # items x procs
            level, _ = median_polish(figures)
            results = {name: {"median_ms": float(np.exp(level[i])), "p90_ms": float(np.exp(level[i]))}
                       for i, name in enumerate(records[0]["names"])}
            accuracy = assemble_table(manifest, {"results": results, "metadata": {}})["accuracy"]
            rows.append({"estimator": estimator, **{k: accuracy[k] for k in ("within_10_pct", "within_5_pct",
                                                                             "mape_pct", "subnets")}})
    loads = [r["other_load_cores"] for r in records]
    if args.json:
        print(json.dumps({"load": args.load, "sample_ms": args.sample_ms, "other_load_cores": loads, "rows": rows},
                         indent=2))
        return
    print(f"# demo pack, {args.processes} processes, samples of >= {args.sample_ms:g} ms"
          + (", a CPU-bound loop beside" if args.load else "")
          + f"; other load {', '.join(f'{x:.2f}' for x in loads if x is not None)} cores; "
            f"{rows[0]['subnets']} held-out paths; load average {os.getloadavg()[0]:.1f}")
    print("| estimator       | ±10 % | ±5 % | MAPE % |")
    print("|-----------------|------:|-----:|-------:|")
    for r in rows:
        print(f"| {r['estimator']:<15} | {r['within_10_pct']:5.0f} | {r['within_5_pct']:4.0f} | "
              f"{r['mape_pct']:6.1f} |")


if __name__ == "__main__":
    main()
