"""PyTorch on a CUDA GPU at batch 1: eager calls vs CUDA-graph replay, as the torch-cuda profiles time it.

    python benchmarks/torch_cuda_timing.py [--arch CODE] [--input-size 224] [--precision fp16] [--rounds 8] [--json]

One ShuffleNet subnet of the default space. For eager calls and for the replay of a captured
CUDA graph (profiling/timed.py, TorchItem), prints the median of each timing round (the
timing protocol: warm-up, repeated samples, CUDA synchronisation before every clock read) and,
for eager calls, the host CPU time per call: when it equals the wall time per call, an eager
figure times the host's Python dispatch, not the GPU. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from pathnas.deploy.timing import time_callable
from pathnas.profiling.timed import TorchItem
from pathnas.spaces import build_supernet, space_config

DEFAULT_ARCH = "77005373553057050753"


def rounds_of(item: TorchItem, rounds: int) -> list[float]:
    return [time_callable(item.call, repeats=15, sync=item.sync).median_ms for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=DEFAULT_ARCH)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--precision", default="fp16", choices=["fp16", "fp32"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    torch.manual_seed(0)
    net = build_supernet(space_config("shufflenet", input_size=args.input_size)).eval()
    shape = (1, 3, args.input_size, args.input_size)

    graph = TorchItem(net.extract(args.arch), shape, "cuda", args.precision)
    eager = TorchItem(net.extract(args.arch), shape, "cuda", args.precision)
    eager.graph = None  # the same module and input, called eagerly
    results = {"cuda graph": rounds_of(graph, args.rounds), "eager": rounds_of(eager, args.rounds)}
    with torch.inference_mode():
        torch.cuda.synchronize()
        calls = 200
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            eager.module(eager.x)
        cpu1 = time.process_time()
        torch.cuda.synchronize()
        wall1 = time.perf_counter()
    host = {"eager_cpu_ms_per_call": (cpu1 - cpu0) / calls * 1e3, "eager_wall_ms_per_call": (wall1 - wall0) / calls * 1e3}
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "arch": args.arch,
           "input_size": args.input_size, "precision": args.precision, "round_medians_ms": results, **host}
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    print(f"# {out['gpu']}, torch {out['torch']}; shufflenet {args.arch} at {args.input_size} px, {args.precision}, "
          f"batch 1; {args.rounds} timing rounds")
    print("| timing | fastest round ms | slowest round ms | median of rounds ms |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {min(r):.3f} | {max(r):.3f} | {np.median(r):.3f} |")
    print(f"\neager: {host['eager_cpu_ms_per_call']:.3f} ms of host CPU time per call for "
          f"{host['eager_wall_ms_per_call']:.3f} ms of wall time per call")


if __name__ == "__main__":
    main()
