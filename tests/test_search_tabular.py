"""The tabular space: `pathnas-edge search --space nb201 --benchmark FILE --dataset D --device X` on a fixture
the test writes (same format as NAS-Bench-201-HW, other column names), and the offline proposers on it."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from nb201_fixture import write_benchmark
from pathnas.errors import InvalidFileError, RunLockedError
from pathnas.io import read_jsonl
from pathnas.search import (Budgets, EvolutionProposer, PriorGuidedProposer, RandomProposer, Search,
                            SearchMismatchError, read_evaluations)
from pathnas.search.tabular import BenchmarkLatency, TabularTarget
from pathnas.settings import SearchSettings
from cli_helpers import pathnas_edge
from search_helpers import bench, search  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def settings(bench, run_dir, **overrides) -> SearchSettings:
    base = dict(space="nb201", benchmark=bench["path"], dataset="tissue", device="edge_a", run_dir=run_dir)
    return SearchSettings(**{**base, **overrides})


def median_latency(bench, device="edge_a") -> float:
    return float(np.median([r[f"lat_ms_{device}"] for r in bench["rows"].values()]))


# -- the command ---------------------------------------------------------------------------------

def test_the_tabular_search_command_prints_the_summary_as_json(bench, tmp_path, monkeypatch, capsys):
    budget = median_latency(bench)
    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                              "--dataset", "tissue", "--device", "edge_a", "--budget-ms", str(budget),
                              "--iterations", "10", "--run-dir", str(tmp_path / "run"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    best, rows = summary["best"], bench["rows"]
    assert len(best["arch"]) == 6 and set(best["arch"]) <= set("01234")
    assert best["metric"] == rows[best["arch"]]["tissue_val"]
    assert best["test_metric"] == rows[best["arch"]]["tissue_test"] and best["test_metric_name"] == "tissue_test"
    assert best["latency_ms"] == rows[best["arch"]]["lat_ms_edge_a"] <= budget
    assert summary["evaluations"] == 10 and summary["proposer"] == "prior-bo"
    assert "no LLM is configured" in summary["proposer_choice"]["why"] and "proposer prior-bo (auto" in err
    records = read_evaluations(tmp_path / "run" / "evaluations.jsonl")
    assert best["metric"] == max(r["metric"] for r in records)
    assert all("test" not in json.dumps(r) for r in records)  # a proposer never sees the test split
    assert summary["device"]["source"] == "measured-table" and summary["device"]["column"] == "lat_ms_edge_a"
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 1000


@pytest.mark.parametrize("option, value, named", [("--dataset", "colon", "data sets in this file: blood, tissue"),
                                                  ("--device", "jetson", "devices in this file: edge_a, edge_b, tiny")])
def test_columns_that_are_not_there_are_named_with_those_that_are(bench, tmp_path, monkeypatch, capsys, option, value,
                                                                  named):
    args = {"--dataset": "tissue", "--device": "edge_a", option: value}
    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                              *[x for kv in args.items() for x in kv], "--run-dir", str(tmp_path / "run"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]
    assert str(bench["path"]) in lines[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, named", [
    (["--finetune-epochs", "1"], "--finetune-epochs: applies to supernet spaces only"),
    (["--supernet", "x.pt"], "--supernet: applies to supernet spaces only"),
    (["--skip-bad"], "--skip-bad: applies to supernet spaces only"),
])
def test_supernet_options_are_refused_for_a_tabular_space(bench, tmp_path, monkeypatch, capsys, extra, named):
    code, _, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                            "--dataset", "tissue", "--device", "edge_a", "--run-dir", str(tmp_path), *extra)
    assert code == 2 and named in err and "Traceback" not in err


def test_tabular_options_are_refused_for_a_supernet_space(tmp_path, monkeypatch, capsys):
    code, _, err = pathnas_edge("search", "--device", "cpu", "--supernet", "s.pt", "--data", "d",
                            "--benchmark", "b.csv", "--run-dir", str(tmp_path))
    assert code == 2 and "--benchmark: applies to tabular spaces only" in err
    code, _, err = pathnas_edge("search", "--space", "nb201", "--device", "edge_a",
                            "--benchmark", "b.csv", "--run-dir", str(tmp_path))
    assert code == 2 and "--dataset: --space nb201 is a tabular space: give --dataset" in err


@pytest.mark.parametrize("edit, message", [
    (lambda rows, header: rows[3].update(tissue_val="n/a"), "line 5, column tissue_val: 'n/a' is not a number"),
    (lambda rows, header: rows[7].update(ncode="000008"), "line 9, column ncode: nb201: position 5 (edge 2->3): "
                                                          "code '8' is not allowed"),
    (lambda rows, header: rows[9].update(ncode="21211"), "keep ncode text: its leading zeros count"),
    (lambda rows, header: rows[10].update(ncode=rows[2]["ncode"]), "line 12: ncode 000002 appears twice (also on "
                                                                   "line 4)"),
    (lambda rows, header: rows[5].update(connected=1), "line 7, column connected: says 1, but the output of cell "
                                                       "000010 is not reachable"),
    (lambda rows, header: rows[6].update(lat_ms_edge_a=-1), "line 8, column lat_ms_edge_a: -1 is negative"),
    (lambda rows, header: [c for c in header if c != "params_m"], "no column params_m"),
])
def test_a_bad_benchmark_file_is_refused_naming_line_and_column(tmp_path, edit, message):
    path = write_benchmark(tmp_path / "bad.csv", edit=edit)
    with pytest.raises(InvalidFileError, match=None) as err:
        TabularTarget(path, "nb201", "tissue", "edge_a")
    assert message in str(err.value) and str(path) in str(err.value)


# -- cells that compute nothing, budgets, determinism ------------------------------------------------

@pytest.mark.parametrize("proposer", ["prior-bo", "random", "evolution"])
def test_cells_that_compute_nothing_are_never_proposed_even_when_only_they_fit(bench, tmp_path, proposer):
    connected = [r for r in bench["rows"].values() if r["connected"]]
    budget = sorted(r["lat_ms_edge_a"] for r in connected)[11]  # 12 connected cells fit, and all 341 others
    summary = search(settings(bench, tmp_path / "run", proposer=proposer, budget_ms=budget, iterations=15))
    records = read_evaluations(tmp_path / "run" / "evaluations.jsonl")
    assert all(bench["rows"][r["arch"]]["connected"] for r in records)
    assert len(records) == 12 and summary["status"] == "stopped"  # then nothing is left: a clean stop
    assert "that meets the budgets was evaluated" in summary["reason"] or "can meet the budgets was evaluated" in \
        summary["reason"]
    assert summary["best"]["metric"] == max(r["tissue_val"] for r in connected if r["lat_ms_edge_a"] <= budget)


def test_a_resumed_search_proposes_what_an_uninterrupted_one_did(bench, tmp_path):
    for proposer in ("prior-bo", "evolution", "random"):
        whole = search(settings(bench, tmp_path / proposer / "whole", proposer=proposer, iterations=12, seed=3,
                                budget_ms=median_latency(bench)))
        search(settings(bench, tmp_path / proposer / "parts", proposer=proposer, iterations=5, seed=3,
                        budget_ms=median_latency(bench)))
        resumed = search(settings(bench, tmp_path / proposer / "parts", proposer=proposer, iterations=12, seed=3,
                                  budget_ms=median_latency(bench), resume=True))
        codes = [[r["arch"] for r in read_evaluations(tmp_path / proposer / run / "evaluations.jsonl")]
                 for run in ("whole", "parts")]
        assert codes[0] == codes[1] and len(set(codes[0])) == 12, proposer
        assert whole["best"] == resumed["best"]


def test_resuming_with_other_budgets_recomputes_the_verdicts(bench, tmp_path, caplog):
    run = tmp_path / "run"
    search(settings(bench, run, iterations=8))
    recorded = read_evaluations(run / "evaluations.jsonl")
    budget = sorted(r["latency_ms"] for r in recorded)[3]  # half of them miss it now
    caplog.set_level(logging.WARNING)
    summary = search(settings(bench, run, iterations=8, budget_ms=budget, resume=True))
    after = read_evaluations(run / "evaluations.jsonl")
    assert [r["arch"] for r in after] == [r["arch"] for r in recorded]  # nothing re-evaluated
    assert sum(r["meets_budgets"] for r in after) == 4
    assert all(r["verdict"].startswith("MISSED latency") for r in after if not r["meets_budgets"])
    assert summary["best"]["latency_ms"] <= budget and summary["budgets"]["latency_ms"] == budget
    assert "verdicts of 8 recorded evaluation(s) recomputed; 4 no longer meet the budgets" in caplog.text
    assert f"budgets: none then, latency <= {budget:g} ms now" in caplog.text
    assert read_jsonl(run / "evaluations.jsonl")[0]["budgets"]["latency_ms"] == budget


def test_resuming_with_another_dataset_or_benchmark_is_refused_naming_it(bench, tmp_path):
    run = tmp_path / "run"
    search(settings(bench, run, iterations=2))
    with pytest.raises(SearchMismatchError, match="--dataset changed: tissue then, blood now"):
        search(settings(bench, run, iterations=4, dataset="blood", resume=True))
    other = write_benchmark(tmp_path / "other.csv.gz", seed=1)
    with pytest.raises(SearchMismatchError, match=r"the benchmark file \(--benchmark, SHA-256\) changed"):
        search(settings(bench, run, iterations=4, benchmark=other, resume=True))
    with pytest.raises(FileExistsError, match="--resume"):
        search(settings(bench, run, iterations=4))


def test_a_torn_last_line_is_repaired_on_resume(bench, tmp_path, caplog):
    run = tmp_path / "run"
    search(settings(bench, run, iterations=3))
    with open(run / "evaluations.jsonl", "a") as f:
        f.write('{"iteration": 3, "arch": "3331')  # a crash mid-append
    caplog.set_level(logging.WARNING)
    search(settings(bench, run, iterations=5, resume=True))
    lines = (run / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)  # header + 5, every line whole
    assert "dropped a torn last line" in caplog.text


def test_a_second_search_on_the_same_run_directory_is_refused(bench, tmp_path, locked):
    run = tmp_path / "run"
    run.mkdir()
    pid = locked(run, "search")  # RunLock is re-entrant within a process: another process holds it
    with pytest.raises(RunLockedError, match=f"PID {pid} \\(search\\)"):
        search(settings(bench, run, iterations=2))


# -- the offline default, through the search's own machinery ----------------------------------------

def test_prior_bo_spreads_its_first_evaluations_over_the_highest_capacity_candidates(bench):
    target = TabularTarget(bench["path"], "nb201", "tissue", "edge_a")
    budget = median_latency(bench)
    search_ = Search(target, BenchmarkLatency(target.table), Budgets(budget, None), seed=0)
    proposer = PriorGuidedProposer(seed=0)
    for _ in range(proposer.design):
        search_.evaluate(proposer.propose(search_.ctx), proposer.name)
    feasible = [a for a in target.members() if search_.feasible(a)]
    last = sorted((target.capacity(a) for a in feasible), reverse=True)[math.ceil(0.05 * len(feasible)) - 1]
    top = {a.code for a in feasible if target.capacity(a) >= last}  # the top 5 %, and all tied with the last
    codes = [r["arch"] for r in search_.ctx.history]
    assert set(codes) <= top and len(top) < len(feasible) / 2  # the prior: the most capacity
    distances = [sum(x != y for x, y in zip(a, b)) for i, a in enumerate(codes) for b in codes[:i]]
    assert min(distances) >= 3  # spread out: no two of the design points are near neighbours
    again = Search(target, BenchmarkLatency(target.table), Budgets(budget, None), seed=0)
    assert [PriorGuidedProposer(seed=0).propose(again.ctx).code] == codes[:1]  # a function of (seed, history)


@pytest.mark.parametrize("name", ["prior-bo", "evolution", "random"])
def test_offline_proposers_never_propose_over_the_budget_or_twice(bench, name):
    target = TabularTarget(bench["path"], "nb201", "blood", "edge_b")
    budget = float(np.quantile(target.table.latency, 0.3))
    s = Search(target, BenchmarkLatency(target.table), Budgets(budget, 60.0), seed=1)
    proposer = {"prior-bo": PriorGuidedProposer, "evolution": EvolutionProposer, "random": RandomProposer}[name](1)
    for _ in range(30):
        s.evaluate(proposer.propose(s.ctx), proposer.name)
    records = s.ctx.history
    assert len({r["arch"] for r in records}) == 30
    assert all(r["latency_ms"] <= budget and r["flops"] <= 60e6 and r["meets_budgets"] for r in records)


def test_the_search_table_fits_80_columns(bench, tmp_path):
    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                                  "--dataset", "tissue", "--device", "edge_a", "--budget-ms",
                                  str(median_latency(bench)), "--iterations", "6", "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    table = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table) >= 6 + 4 and all(len(line) <= 80 for line in table)  # 6 rows, header and rules
    assert "…" not in out and "best: " in out
