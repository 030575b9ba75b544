"""A small synthetic benchmark in the NAS-Bench-201 hardware format, written by the tests (the package ships none).

Every one of the 15,625 cells has a row; accuracy is a made-up function of the cell with a
little seeded noise; the data set and device columns have names no real file has (tissue,
blood; edge_a, edge_b, tiny), so nothing can be hard-coded to the shared file's columns.
Cells whose output is not reachable from the input get 10 % accuracy and a 0.5 ms latency,
as a constant graph folded away would measure.
"""
from __future__ import annotations

import csv
import gzip
import itertools
from pathlib import Path

import numpy as np

EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
DATASETS = ("tissue", "blood")
DEVICES = ("edge_a", "edge_b", "tiny")


def connected(code: tuple[int, ...]) -> bool:
    reached = {0}
    for (a, b), op in zip(EDGES, code):
        if op != 0 and a in reached:
            reached.add(b)
    return 3 in reached


def rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for index, code in enumerate(itertools.product(range(5), repeat=6)):
        n3, n1 = code.count(3), code.count(2)
        live = connected(code)
        mflops = 7.78305 + 35.38944 * n3 + 3.93216 * n1
        params = 0.073306 + 0.24304 * n3 + 0.028 * n1
        base = 55 + 6 * min(n3, 3) - 4 * max(0, n3 - 4) + 2 * n1 + 5 * (code[3] == 1) - 3 * code.count(4)
        row = {"index": index, "cellstr": "|" + "|+|".join("|".join(f"{OPS[code[i]]}~{a}" for i, (a, b) in
                                                                      enumerate(EDGES) if b == node)
                                                           for node in (1, 2, 3)) + "|",
               "ncode": "".join(map(str, code)), "mflops": round(mflops, 5), "mflops_live": round(mflops, 5),
               "params_m": round(params, 6), "connected": int(live)}
        for k, name in enumerate(DATASETS):
            val = base - 10 * k + rng.normal(0, 1.0) if live else 10.0
            row[f"{name}_val"] = round(float(np.clip(val, 0, 100)), 3)
            row[f"{name}_test"] = round(float(np.clip(val + rng.normal(0, 0.5), 0, 100)), 3) if live else 10.0
        row["lat_ms_edge_a"] = round(2 + 0.3 * mflops + rng.uniform(0, 1), 4) if live else 0.5
        row["lat_ms_edge_b"] = round(3 + 1.5 * sum(op > 0 for op in code) + rng.uniform(0, 0.5), 4) if live else 0.5
        row["lat_ms_tiny"] = round(0.009 + 0.00001 * mflops, 6) if live else 0.001  # figures that need precision
        out.append(row)
    return out


def write_benchmark(path: Path, seed: int = 0, edit=None) -> Path:
    """The fixture file (gzipped CSV); ``edit(rows)`` may change rows (or the header) before writing."""
    data = rows(seed)
    header = list(data[0])
    if edit is not None:
        header = edit(data, header) or header
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data)
    return path


def lookup(path: Path) -> dict[str, dict]:
    """The fixture's rows by ncode, with numbers as numbers."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        return {r["ncode"]: {k: (v if k in ("ncode", "cellstr") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)}
