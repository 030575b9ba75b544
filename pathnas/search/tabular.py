"""Tabular search spaces: a benchmark file is the ground truth, so a search runs in seconds and its
regret is exact.

A file in the NAS-Bench-201 hardware format (one row per cell; see the benchmark's README)
has the columns ``index``, ``ncode`` (6 digits, one operation per edge), ``mflops``,
``params_m``, optionally ``mflops_live`` and ``connected``, accuracy columns
``<dataset>_val`` / ``<dataset>_test`` and latency columns ``lat_ms_<device>``. ``--dataset``
and ``--device`` name columns, so any file in this format works, with any data sets and
devices. The evaluator looks the validation accuracy up; the test accuracy of the best is
reported at the end and never shown to a proposer. Latency is the device column, labelled
as measured. Nothing here needs torch (the search space classes import it, nothing runs it).

A cell whose output cannot be reached from its input computes nothing (its network output is
a constant, and on some devices it measures under 1 ms): it is never proposed, never
evaluated and never the answer, whatever the budgets.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pathnas.errors import InvalidFileError, MissingFileError
from pathnas.io import sha256_file
from pathnas.spaces import Architecture, ArchitectureError, Decision, Option, SearchSpace

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))  # the cell string's (and the ncode's) order
REQUIRED = ("index", "ncode", "mflops", "params_m")


@dataclass(frozen=True)
class TabularSpace:
    """One cell space a tabular benchmark can index: its decisions, which cells compute, what an LLM is told."""

    name: str
    space: SearchSpace
    connected: Callable[[Architecture], bool]
    notes: str


def _nb201_connected(arch: Architecture) -> bool:
    """The output node can be reached from the input through edges that are not 'none'."""
    reached = {0}
    for (src, dst), op in zip(NB201_EDGES, arch.values):  # edges are listed in topological order
        if op != "none" and src in reached:
            reached.add(dst)
    return 3 in reached


def nb201() -> TabularSpace:
    options = tuple(Option(op, str(i)) for i, op in enumerate(NB201_OPS))
    space = SearchSpace("nb201", [Decision(f"edge {a}->{b}", options) for a, b in NB201_EDGES])
    notes = ("A NAS-Bench-201 cell: a graph of 4 nodes (node 0 is the cell's input, node 3 its output); each of "
             "its 6 edges applies one operation to its source node, and each node sums its incoming edges. The "
             "cell is stacked into a fixed network; accuracy and latency are looked up in the benchmark table. "
             "'none' removes an edge: a cell whose output cannot be reached from its input computes nothing and "
             "is never evaluated. An architecture's code is its 6 option codes in edge order (e.g. 333123).")
    return TabularSpace("nb201", space, _nb201_connected, notes)


TABULAR_SPACES: dict[str, Callable[[], TabularSpace]] = {"nb201": nb201}


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _column_kinds(header: list[str]) -> tuple[list[str], list[str]]:
    """The data sets (``<name>_val`` with ``<name>_test``) and devices (``lat_ms_<name>``) of a header."""
    return (sorted(c[:-4] for c in header if c.endswith("_val") and f"{c[:-4]}_test" in header),
            sorted(c[7:] for c in header if c.startswith("lat_ms_")))


def benchmark_columns(path: str | Path) -> tuple[list[str], list[str]]:
    """The data sets and devices a benchmark file has, from its header alone."""
    try:
        with _open_text(Path(path)) as f:
            header = next(csv.reader(f), [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise InvalidFileError(f"benchmark {path}: cannot be read as CSV ({err})") from None
    return _column_kinds([h.strip() for h in header])


class BenchmarkTable:
    """A benchmark file, checked row by row against its space; errors name the file, line and column."""

    def __init__(self, path: str | Path, space: TabularSpace, dataset: str, device: str):
        self.path, self.spec, self.dataset, self.device = Path(path), space, dataset, device
        if not self.path.is_file():
            raise MissingFileError(f"benchmark {self.path} does not exist")
        try:
            with _open_text(self.path) as f:
                rows = list(csv.reader(f))
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
            raise InvalidFileError(f"benchmark {self.path}: cannot be read as CSV ({err})") from None
        if not rows:
            raise InvalidFileError(f"benchmark {self.path}: the file is empty (expected a header row)")
        header = [h.strip() for h in rows[0]]
        self.datasets, self.devices = _column_kinds(header)
        self.val_column, self.test_column = f"{dataset}_val", f"{dataset}_test"
        self.latency_column = f"lat_ms_{device}"
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InvalidFileError(f"benchmark {self.path}: no column {', '.join(missing)} (a {space.name} benchmark "
                                   f"has {', '.join(REQUIRED)}, <dataset>_val/_test and lat_ms_<device> columns)")
        if self.val_column not in header or self.test_column not in header:
            raise InvalidFileError(f"benchmark {self.path}: no columns {self.val_column} and {self.test_column} for "
                                   f"--dataset {dataset}; data sets in this file: {', '.join(self.datasets) or 'none'}")
        if self.latency_column not in header:
            raise InvalidFileError(f"benchmark {self.path}: no column {self.latency_column} for --device {device}; "
                                   f"devices in this file: {', '.join(self.devices) or 'none'}")
        self._read(header, rows[1:])
        self.sha256 = sha256_file(self.path)

    def _read(self, header: list[str], rows: list[list[str]]) -> None:
        col = {name: i for i, name in enumerate(header)}
        live = "mflops_live" if "mflops_live" in col else "mflops"
        numbers = {"index": [], "val": [], "test": [], "latency": [], "mflops": [], "params_m": [], "live": []}
        sources = {"index": "index", "val": self.val_column, "test": self.test_column,
                   "latency": self.latency_column, "mflops": "mflops", "params_m": "params_m", "live": live}
        self.archs: list[Architecture] = []
        self.connected: list[bool] = []
        self.row_of: dict[str, int] = {}
        self._lines: list[int] = []  # the file line of each row, for messages
        seen_index: dict[int, int] = {}
        for n, row in enumerate(rows, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"benchmark {self.path}: line {n}"
            if len(row) != len(header):
                raise InvalidFileError(f"{where} has {len(row)} fields; the header has {len(header)}")
            code = row[col["ncode"]].strip()
            try:
                arch = self.spec.space.decode(code)
            except ArchitectureError as err:
                hint = " (keep ncode text: its leading zeros count)" if code.isdigit() and len(code) < len(
                    self.spec.space) else ""
                raise InvalidFileError(f"{where}, column ncode: {err}{hint}") from None
            if arch.code in self.row_of:
                raise InvalidFileError(f"{where}: ncode {arch.code} appears twice (also on line "
                                       f"{self._lines[self.row_of[arch.code]]})")
            for key, column in sources.items():
                numbers[key].append(self._number(row[col[column]], f"{where}, column {column}", key))
            index = int(numbers["index"][-1])
            if index in seen_index:
                raise InvalidFileError(f"{where}: index {index} appears twice (also on line {seen_index[index]})")
            seen_index[index] = n
            connected = self.spec.connected(arch)
            if "connected" in col and row[col["connected"]].strip() not in ("0", "1"):
                raise InvalidFileError(f"{where}, column connected: {row[col['connected']]!r} is not 0 or 1")
            if "connected" in col and (row[col["connected"]].strip() == "1") != connected:
                raise InvalidFileError(f"{where}, column connected: says {row[col['connected']].strip()}, but the "
                                       f"output of cell {arch.code} is {'' if connected else 'not '}reachable from its "
                                       f"input")
            self.row_of[arch.code] = len(self.archs)
            self._lines.append(n)
            self.archs.append(arch)
            self.connected.append(connected)
        if not self.archs:
            raise InvalidFileError(f"benchmark {self.path}: no rows after the header")
        arrays = {k: np.array(v, dtype=float) for k, v in numbers.items()}
        self.index = arrays["index"].astype(np.int64)
        self.val, self.test, self.latency = arrays["val"], arrays["test"], arrays["latency"]
        self.flops = np.rint(arrays["mflops"] * 1e6).astype(np.int64)
        self.params = np.rint(arrays["params_m"] * 1e6).astype(np.int64)
        self.live_flops = arrays["live"] * 1e6
        self.connected = np.array(self.connected, dtype=bool)

    @staticmethod
    def _number(text: str, where: str, kind: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise InvalidFileError(f"{where}: {text.strip()[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidFileError(f"{where}: {text.strip()[:40]!r} is not a finite number")
        if kind == "index" and (value != int(value) or value < 0):
            raise InvalidFileError(f"{where}: {text.strip()[:40]!r} is not a row index (a whole number >= 0)")
        if kind in ("val", "test") and not 0 <= value <= 100:
            raise InvalidFileError(f"{where}: {value:g} is not an accuracy in percent (0 to 100)")
        if value < 0:
            raise InvalidFileError(f"{where}: {value:g} is negative")
        return value

    def row(self, arch: Architecture) -> int | None:
        return self.row_of.get(arch.code)


class BenchmarkLatency:
    """The device column of a benchmark table as a LatencyModel: one measurement per architecture."""

    source = "measured-table"
    is_estimate = False

    def __init__(self, table: BenchmarkTable):
        self.table = table

    def predict_ms(self, arch) -> float:
        i = self.table.row(arch)
        if i is None:
            raise KeyError(f"{arch.code} is not in {self.table.path}")
        return float(self.table.latency[i])

    def measure_ms(self, arch) -> float | None:
        return None  # the device is not this machine: the table holds what it measured

    def describe(self) -> dict:
        t = self.table
        return {"device": t.device, "runtime": None, "precision": None, "batch_size": 1, "source": self.source,
                "is_estimate": False, "benchmark": str(t.path), "column": t.latency_column,
                "note": f"measured on the device: column {t.latency_column} of the benchmark {t.path.name}, one "
                        f"measurement per architecture (not a prediction)."}


class TabularTarget:
    """What a search of a tabular space evaluates: look-ups in the table."""

    kind = "tabular"

    def __init__(self, benchmark: str | Path, space: str, dataset: str, device: str):
        self.table = BenchmarkTable(benchmark, TABULAR_SPACES[space](), dataset, device)
        self.space = self.table.spec.space
        self.metric_name = self.table.val_column
        self.latency_subject = self.table

    def known(self, arch: Architecture) -> bool:
        """Whether the benchmark has a row (and so figures) for the architecture."""
        return self.table.row(arch) is not None

    def problem(self, arch: Architecture) -> str | None:
        """Why an architecture must never be evaluated or chosen (None when nothing is wrong)."""
        i = self.table.row(arch)
        if i is None:
            return f"not in the benchmark {self.table.path.name}"
        if not self.table.connected[i]:
            return "computes nothing (its output is not reachable from its input)"
        return None

    def cost(self, arch: Architecture) -> tuple[int, int]:
        i = self.table.row(arch)
        return int(self.table.flops[i]), int(self.table.params[i])

    def capacity(self, arch: Architecture) -> tuple[float, float]:
        """FLOPs on edges that reach the output (dead edges add none), and parameters."""
        i = self.table.row(arch)
        return float(self.table.live_flops[i]), float(self.table.params[i])

    def members(self) -> list[Architecture]:
        return self.table.archs

    def evaluate(self, arch: Architecture) -> dict:
        i = self.table.row(arch)
        value = float(self.table.val[i])
        return {"metric": value, "metrics": {self.metric_name: value}, "index": int(self.table.index[i])}

    def best_extras(self, record: dict) -> dict:
        """What the summary adds to the best: its test accuracy, read once, at the end."""
        i = self.table.row_of[record["arch"]]
        return {"test_metric": float(self.table.test[i]), "test_metric_name": self.table.test_column}

    def prompt_facts(self) -> dict:
        t = self.table
        return {"task": f"an image classifier (the {t.dataset} accuracy columns of a {self.space.name} benchmark)",
                "dataset": f"{t.dataset}, as recorded in the benchmark file {t.path.name}: the search selects on "
                           f"{t.val_column} (validation top-1, %); the test accuracy is read once, for the final pick.",
                "space_notes": t.spec.notes, "has_inactive": False}

    def identity(self) -> dict:
        """What the recorded evaluations depend on (a resume with anything else is refused)."""
        return {"kind": self.kind, "space": self.space.name, "benchmark_sha256": self.table.sha256,
                "dataset": self.table.dataset}

    def describe(self) -> dict:
        t = self.table
        return {"kind": self.kind, "space": self.space.name, "benchmark": str(t.path), "dataset": t.dataset,
                "architectures": len(t.archs), "connected": int(t.connected.sum())}

    def summary_fields(self) -> dict:
        return {"benchmark": str(self.table.path), "dataset": self.table.dataset}
