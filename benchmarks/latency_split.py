"""Split measurement on this machine: pack with the toolchain, time with the runtime install only, assemble.

    python benchmarks/latency_split.py [--config demo|paper-width0.5-128] [--fit-subnets 10]
                                       [--holdout 24] [--rounds 3] [--load] [--incremental]
                                       [--device-venv /tmp/pathnas-device-venv] [--json]

1. Makes (once) a separate runtime-only venv, `pip install "<checkout>[runtime]"` (no torch), and
   reinstalls this checkout into it without dependencies on every run, so it runs this code.
2. Packs the configuration's parts and `--fit-subnets` + `--holdout` probe subnets in THIS venv
   (`pathnas-edge profile pack`), times the pack in the device venv with torch blocked at
   import (`pathnas-infer profile`, through `python -m pathnas.deploy.toolkit`), and
   assembles the table (`pathnas-edge profile assemble`).
3. Prints nn-Meter's figures on the held-out subnets: RMSE, RMSPE, MAPE, share within ±5/10/15 %.
`--load` runs a CPU-bound process (a busy loop) beside the device timing. `--incremental` also
measures the configuration in one process, then again with 2 classes reusing every unchanged
part, and prints the seconds of both and their ratio (issue 16: <= 25 %).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from latency_predictor import CONFIGS
from pathnas.deploy.device_profile import read_timings
from pathnas.deploy.timing import TimingProtocol
from pathnas.profiling import load_profile, measure_table
from pathnas.profiling.measure import INCREMENTAL_FIT, INCREMENTAL_SUBNETS, assemble_files
from pathnas.profiling.pack import plan_table, write_pack
from pathnas.spaces import build_supernet, space_config

REPO = Path(__file__).resolve().parent.parent
# Runs a module with torch (and the training code) unimportable, as on a device without the toolchain.
BLOCKED = """
import importlib.abc, runpy, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "fvcore", "onnx"):
            raise ImportError(f"{name} is blocked: this is the runtime-only device")
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""
BUSY = "while True: pass"


def device_venv(path: Path) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        print(f"# creating the runtime-only venv {path} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"{REPO}[runtime]"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(REPO)],
                   check=True, capture_output=True)
    return python


def net_for(config: dict):
    torch.manual_seed(0)
    return build_supernet(space_config("shufflenet", **config)).eval()


def split(args, profile, python: Path, tmp: Path) -> dict:
    net = net_for(CONFIGS[args.config])
    items, reused = plan_table(net, args.fit_subnets + args.holdout, args.fit_subnets)
    start = time.perf_counter()
    pack = tmp / "pack"
    write_pack(net, profile, items, pack, reused, timing=TimingProtocol().but(rounds=args.rounds))
    packed = time.perf_counter()
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if args.load else None
    try:
        timed = subprocess.run([str(python), "-c", BLOCKED, "pathnas.deploy.toolkit", "profile", str(pack), "--out",
                                str(tmp / "timings.json"), "--json"], capture_output=True, text=True,
                               cwd=tmp)  # not the checkout: its pathnas/ folder would shadow the installed package
    finally:
        if busy:
            busy.kill()
            busy.wait()
    if timed.returncode != 0:
        sys.exit(f"the device half failed:\n{timed.stderr}")
    device_s = time.perf_counter() - packed
    table = assemble_files(pack, tmp / "timings.json")
    timings = read_timings(tmp / "timings.json")
    return {"config": args.config, "items": len(items), "pack_s": packed - start, "device_s": device_s,
            "accuracy": table["accuracy"], "overhead": table["overhead"], "metadata": timings["metadata"],
            "device_python": str(python), "load": bool(args.load)}


def incremental(args, profile) -> dict:
    full_config = CONFIGS[args.config]
    start = time.perf_counter()
    full = measure_table(net_for(full_config), profile, subnets=args.fit_subnets + args.holdout,
                         fit_subnets=args.fit_subnets, rounds=args.rounds)
    full_s = time.perf_counter() - start
    changed = {**full_config, "num_classes": 2}
    start = time.perf_counter()
    again = measure_table(net_for(changed), profile, subnets=INCREMENTAL_SUBNETS, fit_subnets=INCREMENTAL_FIT,
                          rounds=args.rounds, reuse=full["parts"])
    again_s = time.perf_counter() - start
    return {"full_s": full_s, "full_parts_timed": full["metadata"]["parts_timed"], "incremental_s": again_s,
            "incremental_parts_timed": again["metadata"]["parts_timed"],
            "incremental_parts_reused": again["metadata"]["parts_reused"], "ratio": again_s / full_s,
            "incremental_accuracy": again["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="demo", choices=list(CONFIGS))
    parser.add_argument("--fit-subnets", type=int, default=10)
    parser.add_argument("--holdout", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=None, help="default: the tables' protocol (TimingProtocol)")
    parser.add_argument("--load", action="store_true", help="a CPU-bound process beside the device timing")
    parser.add_argument("--incremental", action="store_true", help="also time a full and an incremental measure")
    parser.add_argument("--device-venv", type=Path, default=Path(tempfile.gettempdir()) / "pathnas-device-venv")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    profile = load_profile(args.device)
    python = device_venv(args.device_venv)
    with tempfile.TemporaryDirectory(prefix="pathnas-split-") as tmp:
        result = split(args, profile, python, Path(tmp))
    if args.incremental:
        result["incremental"] = incremental(args, profile)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    meta, a, o = result["metadata"], result["accuracy"], result["overhead"]
    print(f"# {profile.name}: packed {result['items']} ONNX files in {result['pack_s']:.0f} s (toolchain venv); "
          f"timed in {result['device_s']:.0f} s by {result['device_python']} (runtime only, torch blocked) on "
          f"{meta['cpu_model']}, {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}"
          + ("; a CPU-bound process ran beside it" if result["load"] else "")
          + f"; 1-minute load average when it ended: {os.getloadavg()[0]:.1f}")
    print(f"# overhead fit on {o['fit_subnets']} subnets: scale {o['scale']:.3f}, offset {o['offset_ms']:.4f} ms")
    print("| config | held-out | RMSE ms | RMSPE % | MAPE % | ±5% | ±10% | ±15% |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {result['config']} | {a['subnets']} | {a['rmse_ms']:.4f} | {a['rmspe_pct']:.2f} | {a['mape_pct']:.2f} | "
          f"{a['within_5_pct']:.0f}% | {a['within_10_pct']:.0f}% | {a['within_15_pct']:.0f}% |")
    if args.incremental:
        inc = result["incremental"]
        print(f"# full measure: {inc['full_parts_timed']} parts timed, {inc['full_s']:.0f} s; after changing only "
              f"the class count: {inc['incremental_parts_timed']} timed, {inc['incremental_parts_reused']} reused, "
              f"{inc['incremental_s']:.0f} s = {100 * inc['ratio']:.0f}% of the full measure; its held-out ±10%: "
              f"{inc['incremental_accuracy']['within_10_pct']:.0f}%")


if __name__ == "__main__":
    main()
