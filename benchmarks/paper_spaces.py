"""The default search spaces against the Pathology-NAS paper's published figures.

    python benchmarks/paper_spaces.py [--json]

1. Named paths of each default space at 224 px, with the FLOPs and parameters `pathnas-edge inspect`
   gives (tests/test_spaces.py checks each against a count of the reference code, layer by layer).
2. Every (FLOPs, params) pair the paper publishes for a searched model, beside the path of our space
   that comes nearest (relative distance in FLOPs plus relative distance in params). The paper's
   figures are thop counts: multiply-adds of layers, BatchNorm left out (its FLOPs helper says so),
   attention products and parameters outside layers (ViT's position embedding and class token) not
   seen. So the ViT rows leave those out of ours too; ShuffleNet and U-Net need no adjustment.
   A searched architecture is not published, so a near path shows the figures are reachable in the
   space, not which path the paper found.
It counts; it times nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter

import numpy as np

from pathnas.cost import measure_cost
from pathnas.spaces import build_supernet, space_config

# The paper's searched models: (table, data set, MFLOPs, M params). Tables 1, 2, 6 and 7.
PAPER = {
    "shufflenet": [("T1/T6", "BreakHis", 213.30, 1.80), ("T1/T6", "Diabetic", 240.25, 2.10),
                   ("T6 10 ep", "BreakHis", 326.09, 2.82), ("T6 30 ep", "BreakHis", 305.47, 2.76),
                   ("T6 40 ep", "BreakHis", 327.45, 2.82), ("T6 10 ep", "Diabetic", 328.00, 2.81),
                   ("T6 30 ep", "Diabetic", 250.79, 2.23), ("T6 40 ep", "Diabetic", 258.03, 2.40)],
    "unet": [("T2/T7", "BCSS", 10580, 11.37), ("T2/T7", "PanNuke", 14330, 8.34), ("T7 10 ep", "BCSS", 14530, 6.64),
             ("T7 10 ep", "PanNuke", 16230, 11.39), ("T7 30 ep", "BCSS", 12630, 12.76),
             ("T7 40 ep", "BCSS", 8670, 10.43)],
    "vit": [("T1/T6", "BreakHis", 4950, 25.12), ("T1/T6", "Diabetic", 4130, 20.99),
            ("T6 10 ep", "BreakHis", 5350, 27.19), ("T6 30 ep", "BreakHis", 4770, 24.24),
            ("T6 40 ep", "BreakHis", 5000, 25.42)],
}
NAMED = {
    "shufflenet": ["0" * 20, "3" * 20, "7" * 20],
    "unet": ["0" * 8, "3" * 8, "7" * 8],
    "vit": ["c" + "34" * 12 + "----", "e" + "85" * 14],
}
SIZE = (1, 3, 224, 224)


def cost(module, shape) -> tuple[int, int]:
    c = measure_cost(module, tuple(shape))
    return c.flops, c.params


def part_costs(net) -> tuple[dict, tuple[int, int]]:
    """(position, value) -> (flops, params) of each choice, and what every path has besides (fixed parts,
    and what runs between parts), from the supernet's latency parts."""
    by_choice, fixed = {}, np.zeros(2, dtype=np.int64)
    for part in net.latency_parts():
        c = np.array(cost(part.build(), part.input_shape), dtype=np.int64)
        if part.requires:
            for requirement in part.requires:
                by_choice[requirement] = by_choice.get(requirement, 0) + c / len(part.requires)
        else:
            fixed += c
    probe = net.space.decode(NAMED[net.config.space][1])
    whole = np.array(cost(net.extract(probe), SIZE))
    chosen = sum(by_choice.get((pos, v), 0) for pos, v in enumerate(probe.values) if v is not None)
    return by_choice, tuple(whole - chosen)  # between parts: pooling in the U-Net topology, ...


def nearest_shufflenet(net, targets):
    """Within a stage, every stride-1 layer sees the same shape, so a path's cost depends on the first
    layer's choice and on how many of the others take each choice: enumerate those per stage, then
    join stages 1+2 and 3+4 and search the join in bulk."""
    by_choice, base = part_costs(net)
    values = net.space.decisions[0].values
    stages, pos = [], 0
    for repeats in net.config.stage_repeats:
        options = []
        for first in values:
            for counts in itertools.combinations_with_replacement(values, repeats - 1):
                code = [first, *counts]
                c = sum((np.asarray(by_choice.get((pos + i, v), (0, 0))) for i, v in enumerate(code)), np.zeros(2))
                options.append((c, code))
        stages.append(options)
        pos += repeats

    def join(a, b):
        return [(ca + cb, xa + xb) for (ca, xa), (cb, xb) in itertools.product(a, b)]

    left, right = join(stages[0], stages[1]), join(stages[2], stages[3])
    right_cost = np.array([c for c, _ in right])
    rows = []
    for table, dataset, mflops, mparams in targets:
        best = (np.inf, None, None)
        for c, code in left:
            total = right_cost + c + base
            d = np.abs(total[:, 0] / 1e6 - mflops) / mflops + np.abs(total[:, 1] / 1e6 - mparams) / mparams
            i = int(d.argmin())
            if d[i] < best[0]:
                best = (d[i], code + right[i][1], total[i])
        values_ = best[1]
        arch = net.space.from_values(values_)
        rows.append((table, dataset, mflops, mparams, arch.code, *(best[2] / 1e6), "choice counts " +
                     ", ".join(f"{k}: {n}" for k, n in sorted(Counter(map(str, values_)).items()))))
    return rows


def nearest_unet(net, targets):
    by_choice, base = part_costs(net)
    values = net.space.decisions[0].values
    paths = list(itertools.product(values, repeat=len(net.space)))
    totals = np.array([sum((np.asarray(by_choice[(i, v)]) for i, v in enumerate(p)), np.zeros(2)) for p in paths])
    totals += np.asarray(base)
    rows = []
    for table, dataset, mflops, mparams in targets:
        d = np.abs(totals[:, 0] / 1e6 - mflops) / mflops + np.abs(totals[:, 1] / 1e6 - mparams) / mparams
        i = int(d.argmin())
        rows.append((table, dataset, mflops, mparams, net.space.from_values(paths[i]).code, *(totals[i] / 1e6), ""))
    return rows


def nearest_vit(net, targets):
    """The head count changes nothing (the reference's attention is always 384 wide), so a path's
    figures are set by its depth and the sum of its MLP ratios: try every combination."""
    c = net.config
    tokens = (c.input_size // c.patch_size) ** 2 + 1
    rows, candidates = [], []
    for depth in c.depth_choices:
        for ratios in itertools.combinations_with_replacement(c.mlp_ratio_choices, depth):
            candidates.append((depth, ratios))
    seen = {}
    for depth, ratios in candidates:
        key = (depth, sum(ratios))
        if key in seen:
            continue
        values = [depth] + [v for r in ratios for v in (c.head_choices[0], r)] + [None] * 2 * (c.max_depth - depth)
        arch = net.space.from_values(values)
        flops, params = cost(net.extract(arch), SIZE)
        # thop's view: no attention products (2 n^2 d per block), no position embedding or class token
        flops -= depth * 2 * tokens * tokens * c.dim
        params -= (tokens + 1) * c.dim
        seen[key] = (arch.code, flops, params)
    for table, dataset, gflops, mparams in targets:
        code, flops, params = min(seen.values(), key=lambda t: abs(t[1] / 1e6 - gflops) / gflops
                                  + abs(t[2] / 1e6 - mparams) / mparams)
        rows.append((table, dataset, gflops, mparams, code, flops / 1e6, params / 1e6,
                     "without attention products, position embedding and class token (as thop)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {"named": [], "paper": []}
    search = {"shufflenet": nearest_shufflenet, "unet": nearest_unet, "vit": nearest_vit}
    for space in ("shufflenet", "unet", "vit"):
        net = build_supernet(space_config(space, num_classes=2)).eval()
        for code in NAMED[space]:
            flops, params = cost(net.extract(code), SIZE)
            result["named"].append({"space": space, "arch": code, "mflops": round(flops / 1e6, 2),
                                    "mparams": round(params / 1e6, 3)})
        for table, dataset, mflops, mparams, code, flops, params, note in search[space](net, PAPER[space]):
            result["paper"].append({"space": space, "table": table, "dataset": dataset, "paper_mflops": mflops,
                                    "paper_mparams": mparams, "nearest_arch": code, "mflops": round(float(flops), 2),
                                    "mparams": round(float(params), 3), "note": note})
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print("# named paths at 224 px, 2 classes (pathnas-edge inspect; FLOPs = fvcore multiply-adds)")
    print("| space | arch | MFLOPs | M params |\n|---|---|---:|---:|")
    for r in result["named"]:
        print(f"| {r['space']} | `{r['arch']}` | {r['mflops']:.2f} | {r['mparams']:.3f} |")
    print("\n# the paper's searched models and the nearest path of the space")
    print("| space | table | data | paper MFLOPs / M | nearest MFLOPs / M |\n|---|---|---|---:|---:|")
    for r in result["paper"]:
        print(f"| {r['space']} | {r['table']} | {r['dataset']} | {r['paper_mflops']:g} / {r['paper_mparams']:g} "
              f"| {r['mflops']:.2f} / {r['mparams']:.3f} |")
    print("\nViT rows: ours without attention products, position embedding and class token (thop sees none).")


if __name__ == "__main__":
    main()
