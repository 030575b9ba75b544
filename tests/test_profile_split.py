"""Latency tables in three steps (pack on the host, torch-free timing on the device, assemble),
incremental tables, measuring what a search lacks on this host, drift recalibration, transfer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bundle_helpers import imported_distributions, torch_free
from cli_helpers import pathnas_edge
from pathnas.deploy.device_profile import PACK_MANIFEST, PackError, read_pack, read_timings, time_pack
from pathnas.profiling import load_profile, load_table, measure_table, predictor_for, save_table
from pathnas.profiling.measure import assemble_files, reusable_parts
from pathnas.profiling.pack import module_digest, plan_table
from pathnas.profiling.tables import SCHEMA, config_digest
from pathnas.spaces import build_supernet, space_config

TINY = dict(width_mult=0.25, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1))
KNOBS = ["--space", "shufflenet", "--input-size", "32", "--width-mult", "0.25", "--num-classes", "4",
         "--option", "stage_repeats=[1,1,1,1]"]


def tiny_net(**changes):
    torch.manual_seed(0)
    return build_supernet(space_config("shufflenet", **{**TINY, **changes})).eval()


@pytest.fixture(scope="module")
def tiny():
    return tiny_net()


@pytest.fixture(scope="module")
def pack(tiny, tmp_path_factory):
    """A small pack of the tiny space: every part and 5 probes (3 fit, 2 held out)."""
    out = tmp_path_factory.mktemp("pack") / "tiny.pack"
    code, _, err = pathnas_edge("profile", "pack", "--device", "cpu", *KNOBS, "--subnets", "5", "--fit-subnets", "3",
                                "--rounds", "1", "--out", out)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def timings(pack):
    """The pack timed torch-free, as on a device with the runtime install only."""
    out = pack.parent / "timings.json"
    result = torch_free("pathnas.deploy.toolkit", "profile", pack, "--out", out, "--repeats", "3")
    assert result.returncode == 0, result.stderr
    assert not {"torch", "onnx", "timm"} & imported_distributions(result)
    return out


def test_pack_describes_itself(tiny, pack):
    manifest = read_pack(pack)
    parts = {p.key for p in tiny.latency_parts()}
    assert manifest["profile"]["name"] == "x86-cpu-ort" and manifest["profile"]["threads"] == 2
    assert manifest["config_digest"] == config_digest(tiny.config.model_dump(mode="json"))
    assert {i["key"] for i in manifest["items"] if i["kind"] == "part"} == parts
    nets = [i for i in manifest["items"] if i["kind"] == "net"]
    assert [i["set"] for i in nets] == ["fit"] * 3 + ["holdout"] * 2 + ["reference"]
    reference = nets.pop()  # timed with the parts and probes: the table's anchor, a file as it is
    assert reference["name"] == "reference" and reference["input_shape"] == [1, 3, 64, 64]
    assert "exporter" not in reference or reference["exporter"] is None
    for net in nets:  # each probe names the parts it selects, so the table is assembled from data alone
        assert net["parts"] == [p.key for p in tiny.parts_for(net["arch"])]
    assert all((pack / i["file"]).is_file() and i["file"].endswith(".onnx") for i in manifest["items"])


def test_a_pack_comes_as_a_zip_too_which_unzips_to_the_same_pack(pack, tmp_path):
    import zipfile

    with zipfile.ZipFile(f"{pack}.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    assert read_pack(tmp_path / "unzipped") == read_pack(pack)  # every file there, every SHA-256 right
    (tmp_path / "other.zip").write_bytes(b"someone's")  # a new folder name whose zip exists: refused first
    code, _, err = pathnas_edge("profile", "pack", "--device", "cpu", *KNOBS, "--out", tmp_path / "other")
    assert code == 2 and "other.zip already exists" in err.replace("\n", "")
    assert not (tmp_path / "other").exists() and (tmp_path / "other.zip").read_bytes() == b"someone's"


def test_the_device_half_runs_without_torch_and_the_table_assembles(tiny, pack, timings, tmp_path):
    record = read_timings(timings, pack)
    meta = record["metadata"]
    assert meta["execution_providers"] == ["CPUExecutionProvider"] and meta["versions"]["onnxruntime"]
    assert meta["threads"] == 2 and meta["device_mismatch"] == [] and "torch" not in meta["versions"]
    assert set(record["results"]) == {i["name"] for i in read_pack(pack)["items"]}
    out = tmp_path / "table.json"
    code, stdout, err = pathnas_edge("profile", "assemble", pack, timings, "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["parts_timed"] == len({p.key for p in tiny.latency_parts()}) and report["parts_reused"] == 0
    table = load_table(out)
    assert table["schema"] == SCHEMA and table["metadata"]["toolchain_versions"]["torch"]
    assert set(report["accuracy"]) >= {"rmse_ms", "rmspe_pct", "mape_pct", "within_5_pct", "within_10_pct"}
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=out)
    row = table["end_to_end"][0]
    assert predictor.predict_ms(row["arch"]) == pytest.approx(row["predicted_ms"])
    assert all(p["module_digest"] for p in table["parts"].values())


def test_a_tampered_pack_or_foreign_timings_are_refused(pack, timings, tmp_path):
    import shutil

    copy = tmp_path / "copy.pack"
    shutil.copytree(pack, copy)
    manifest = json.loads((copy / PACK_MANIFEST).read_text())
    victim = copy / manifest["items"][0]["file"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(PackError, match=r"items\[0\]: .*0000.onnx does not match its SHA-256"):
        read_pack(copy)
    manifest["items"][0]["file"] = "../outside.onnx"
    (copy / PACK_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match=r"items\[0\].file '../outside.onnx': a relative path"):
        read_pack(copy)
    manifest["items"][0]["file"] = "items/0000.onnx"
    manifest["seed"] = 7  # another pack: the same files, another manifest
    (copy / PACK_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="made from another pack"):
        assemble_files(copy, timings)
    result = torch_free("pathnas.deploy.toolkit", "profile", tmp_path / "nothing", "--out", tmp_path / "t.json")
    assert result.returncode == 2 and "latency pack" in result.stderr and "Traceback" not in result.stderr


def test_the_device_half_warns_when_it_is_not_the_device(pack, tmp_path):
    import shutil

    copy = tmp_path / "other.pack"
    shutil.copytree(pack, copy)
    manifest = json.loads((copy / PACK_MANIFEST).read_text())
    manifest["profile"]["cpu_match"] = {"arch": "x86_64", "flags": ["avx2", "no_such_flag"]}
    (copy / PACK_MANIFEST).write_text(json.dumps(manifest))
    warnings = []
    record = time_pack(copy, rounds=1, repeats=3, warn=warnings.append)
    assert len(warnings) == 1 and "not the device the pack was made for" in warnings[0]
    assert "the CPU lacks no_such_flag" in warnings[0]
    assert record["metadata"]["device_mismatch"] == ["the CPU lacks no_such_flag"]


# -- incremental tables ----------------------------------------------------------------------------

def test_a_changed_class_count_reuses_every_unchanged_part(tiny):
    parts = {p.key: {"median_ms": 0.01, "module_digest": module_digest(p.build())} for p in tiny.latency_parts()}
    items, reused = plan_table(tiny_net(num_classes=2), 4, 2, reuse=parts)
    timed = [i.key for i in items if i.kind == "part"]
    assert len(timed) == 1 and timed[0].startswith("shufflenet.head(classes=2)")
    assert set(reused) == set(parts) - {k for k in parts if k.startswith("shufflenet.head")}
    # a part under an unchanged key but with another module (here the SE reduction) is timed again
    items, reused = plan_table(tiny_net(se_reduction=4), 4, 2, reuse=parts)
    units = [i.key for i in items if i.kind == "part" and ".unit(" in i.key]
    assert units and not any(".unit(" in k for k in reused) and all(k in parts for k in units)


@pytest.fixture(scope="module")
def assembled(pack, timings):
    """The table of the tiny pack, as a table of this machine in a user's table folder."""
    return assemble_files(pack, timings)


def test_an_incremental_measure_times_only_the_new_part_and_refits_the_overhead(assembled, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHNAS_LATENCY_TABLES", str(tmp_path))
    profile = load_profile("cpu")
    save_table(assembled, tmp_path / profile.name / "full.json")
    reuse = reusable_parts(profile)  # tables of this very machine, the user's newest first (then shipped ones)
    assert all(reuse[key]["reused_from"].endswith("full.json") for key in assembled["parts"])
    again = measure_table(tiny_net(num_classes=2), profile, subnets=4, fit_subnets=3, rounds=1, repeats=3, reuse=reuse)
    assert again["metadata"]["parts_timed"] == 1 and again["metadata"]["parts_reused"] == len(assembled["parts"]) - 1
    for key, entry in again["parts"].items():
        if not key.startswith("shufflenet.head"):
            assert entry["median_ms"] == assembled["parts"][key]["median_ms"] and entry["reused_from"]
    assert again["overhead"]["fit_subnets"] == 3 and len(again["end_to_end"]) == 4


# -- never stop a search for a table this machine can measure ----------------------------------------

def test_a_missing_table_for_this_host_is_measured_into_the_run_and_nothing_outside(assembled, tmp_path, monkeypatch):
    from pathnas.profiling import ondemand

    monkeypatch.setenv("PATHNAS_LATENCY_TABLES", str(tmp_path / "tables"))
    save_table(assembled, tmp_path / "tables" / "x86-cpu-ort" / "earlier.json")  # an earlier table of this machine
    monkeypatch.setattr(ondemand, "INCREMENTAL_SUBNETS", 4)
    monkeypatch.setattr(ondemand, "INCREMENTAL_FIT", 3)
    net = tiny_net(num_classes=2)  # a class count no table has: only the head is timed
    predictor = ondemand.predictor_measuring_if_missing(load_profile("cpu"), net, tmp_path / "run")
    assert predictor.table["metadata"]["parts_timed"] == 1
    stored = tmp_path / "run" / f"shufflenet-{config_digest(net.config.model_dump(mode='json'))}.json"
    assert stored.is_file() and predictor.table_path == stored
    assert [p.name for p in (tmp_path / "tables" / "x86-cpu-ort").iterdir()] == ["earlier.json"]  # only read
    note = predictor.describe()["note"]
    assert "measured on this machine" in note and str(stored) in note
    monkeypatch.setattr(ondemand, "measure_table", lambda *a, **k: pytest.fail("measured twice"))
    again = ondemand.predictor_measuring_if_missing(load_profile("cpu"), net, tmp_path / "run")  # a resumed run
    assert again.table_path == stored and again.predict_ms("0000") == pytest.approx(predictor.predict_ms("0000"))


def test_another_device_without_a_table_still_names_the_commands(tiny, tmp_path):
    from pathnas.profiling import ondemand
    from pathnas.profiling.tables import NoLatencyTableError

    with pytest.raises(NoLatencyTableError, match="profile pack --device jetson-orin-nano"):
        ondemand.predictor_measuring_if_missing(load_profile("jetson"), tiny, tmp_path)


# -- few-shot transfer from another device's table ---------------------------------------------------

def test_calibrate_from_another_devices_table(tiny, tmp_path):
    from test_profiling import hand_made_table

    other = {**hand_made_table(tiny), "profile": "x86-cpu-openvino"}
    source = save_table(other, tmp_path / "openvino.json")
    out = tmp_path / "transferred.json"
    code, stdout, err = pathnas_edge("profile", "calibrate", "--device", "cpu", *KNOBS, "--from", source, "--out", out,
                                     "--subnets", "4", "--holdout", "3", "--rounds", "1", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["source_device"] == "x86-cpu-openvino" and isinstance(report["usable"], bool)
    assert set(report["before"]) >= {"within_10_pct", "spearman"} and report["after"]["subnets"] == 4
    held = report["holdout"]  # paths the fit never saw, timed with the probes: HELP's figures before and after
    assert held["subnets"] == 3 and set(held["after"]) >= {"within_10_pct", "spearman"}
    held_archs = {r["arch"] for r in load_table(out)["calibration"]["subnets"]}
    assert len(held_archs) == 4
    table = load_table(out)
    assert table["profile"] == "x86-cpu-ort" and table["parts"] == other["parts"]
    assert table["metadata"]["parts_timed_on"]["device"] == "x86-cpu-openvino"
    predictor_for(load_profile("cpu"), tiny, table_path=out)  # the search takes it
    code, _, err = pathnas_edge("profile", "calibrate", "--device", "cpu", *KNOBS, "--table", source, "--out", out)
    assert code == 2 and "pass it with --from" in err


# -- tables measured before the split ---------------------------------------------------------------

def test_shipped_tables_still_load_and_an_unusable_one_says_how_to_remeasure(tmp_path):
    from pathnas.deploy.runtimes import PACK_RUNTIMES
    from pathnas.deploy.timing import TimingProtocol
    from pathnas.profiling import list_profiles
    from pathnas.profiling.tables import packaged_tables_dir

    shipped = [(p, t) for p in list_profiles() for t in sorted(packaged_tables_dir(p).glob("*.json"))]
    assert len(shipped) >= 3
    for profile, path in shipped:
        table = load_table(path)
        config = dict(table["space_config"])
        net = build_supernet(space_config(config.pop("space"), **config))
        assert predictor_for(profile, net, table_path=path).predict_ms(net.space.decode("3" * len(net.space))) > 0
        if profile.runtime in PACK_RUNTIMES:  # measured in the anchored format: a later day can hold it to its word
            assert table["anchor"]["reference_ms"] > 0 and table["anchor"]["tolerance_pct"] >= 10
            assert all(p["spread_pct"] is not None for p in table["parts"].values())
            assert TimingProtocol.from_dict(table["metadata"]["timing"]) == TimingProtocol()
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": SCHEMA, "profile": "x86-cpu-ort"}))
    with pytest.raises(ValueError, match="lacks 'space_config'; measure it again with `pathnas-edge profile measure`"):
        load_table(old)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny supernet pretrained for one step on a 2-class image-folder data set at 48 px (no table has it)."""
    from PIL import Image

    from pathnas.train import PretrainConfig, pretrain

    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    for label in ("benign", "tumour"):
        (root / "data" / label).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "data" / label / f"{i}.png")
    cfg = PretrainConfig(data=root / "data", run_dir=root / "supernet", epochs=1, batch_size=4, workers=0,
                         eval_paths=0, device="cpu", max_steps_per_epoch=1)
    config = space_config("shufflenet", **{**TINY, "num_classes": 2, "input_size": 48})
    result = pretrain(config, cfg, progress=False)
    return {"root": root, "config": config, "supernet": result.supernet, "checkpoint": root / "supernet" / "last.pt",
            "data": root / "data"}


def search_settings(trained, run_dir, **changes):
    from pathnas.settings import SearchSettings

    return SearchSettings(**{**dict(device="cpu", supernet=trained["checkpoint"], data=trained["data"], run_dir=run_dir,
                                    iterations=4, proposer="random", bn_images=4, batch_size=4, measure_local=False),
                             **changes})


def test_a_search_on_this_host_measures_the_table_it_lacks_into_its_run(trained, tmp_path, monkeypatch):
    """`search --device cpu` on a 2-class data set at an input size no table has: the table is measured
    first, stored in the run directory (never in the shared folder), and the summary says so."""
    from pathnas.profiling import ondemand
    from pathnas.search import run_search

    monkeypatch.setenv("PATHNAS_LATENCY_TABLES", str(tmp_path / "tables"))
    monkeypatch.setattr(ondemand, "ON_DEMAND_SUBNETS", 4)
    monkeypatch.setattr(ondemand, "ON_DEMAND_FIT", 3)
    settings = search_settings(trained, tmp_path / "search", iterations=2)
    summary = run_search(settings, ondemand.latency_factory(settings))
    assert summary["status"] == "completed"
    stored = tmp_path / "search" / "latency" / f"shufflenet-{config_digest(trained['config'].model_dump(mode='json'))}.json"
    assert stored.is_file() and summary["device"]["table"] == str(stored)
    assert "measured on this machine" in summary["device"]["note"] and not (tmp_path / "tables").exists()


def test_a_search_decides_the_same_whatever_its_probe_reads_and_reanchors_only_when_asked(trained, tmp_path,
                                                                                          monkeypatch, caplog):
    """The start-up probe made to read 2x off, on a busy machine and then on a quiet one: the search chooses
    what it chooses untouched, and writes nothing outside its run directory; --reanchor scales the table by
    the reference, records the factor in the run, and --resume reuses it whatever the probe reads then."""
    from pathnas.profiling import probe
    from pathnas.profiling.anchoring import anchor_record_path, recorded_anchor
    from pathnas.search import read_evaluations
    from search_helpers import search
    from test_profiling import anchored_table, probe_timings

    for var in ("PATHNAS_LATENCY_TABLES", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var))
    table_path = save_table(anchored_table(trained["supernet"]), tmp_path / "given" / "table.json")
    table_bytes = table_path.read_bytes()
    reading = {"factor": 2.0, "load": 1.5}

    def timed_now(predictor, archs, rounds):  # the probe's timings, as a machine 2x off would give them
        return probe_timings(predictor, archs, reading["factor"], reading["factor"], reading["load"])

    monkeypatch.setattr(probe, "time_probe", timed_now)
    from pathnas.profiling.pack import sample_archs

    predictor = predictor_for(load_profile("cpu"), trained["supernet"], table_path=table_path)
    predicted = sorted(predictor.predict_ms(a) for a in sample_archs(trained["supernet"], 12, 0))
    base = dict(latency_table=table_path, budget_ms=predicted[6])  # about half the paths fit

    def chosen(run):
        return [(e["arch"], round(e["latency_ms"], 6), e["verdict"]) for e in read_evaluations(run / "evaluations.jsonl")]

    unprobed = search(search_settings(trained, tmp_path / "unprobed", **base))
    with caplog.at_level("WARNING", logger="pathnas.profiling"):
        busy = search(search_settings(trained, tmp_path / "busy", measure_local=True, **base))
    assert any("this machine is busy" in r.getMessage() for r in caplog.records)
    reading["load"] = 0.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="pathnas.profiling"):
        quiet = search(search_settings(trained, tmp_path / "quiet", measure_local=True, **base))
    warned = [r.getMessage() for r in caplog.records if "is off on this machine now" in r.getMessage()]
    assert len(warned) == 1 and f"pathnas-edge profile check {table_path}" in warned[0]
    for summary, run in ((busy, tmp_path / "busy"), (quiet, tmp_path / "quiet")):
        assert chosen(run) == chosen(tmp_path / "unprobed") and summary["best"]["arch"] == unprobed["best"]["arch"]
        assert "anchor" not in summary["device"]
    assert table_path.read_bytes() == table_bytes and list(tmp_path.glob("PATHNAS_LATENCY_TABLES/*")) == []
    assert not (tmp_path / "XDG_CACHE_HOME" / "pathnas-edge").exists()  # (libraries keep their font caches there)

    anchored = search(search_settings(trained, tmp_path / "anchored", measure_local=True, reanchor=True,
                                      **{**base, "iterations": 2}))
    assert anchored["device"]["anchor"]["factor"] == pytest.approx(2.0)
    assert "table of 2026-11-02 × 2.00 by the reference" in anchored["device"]["note"]
    first = chosen(tmp_path / "anchored")
    assert [lat for _, lat, _ in first] == [pytest.approx(2 * lat) for a, lat, _ in chosen(tmp_path / "unprobed")
                                            if a in {x for x, _, _ in first}]
    reading["factor"] = 1.0  # the machine sped up: a resumed run keeps the factor it recorded
    resumed = search(search_settings(trained, tmp_path / "anchored", measure_local=True, reanchor=True, resume=True,
                                     **{**base, "iterations": 3}))
    assert resumed["device"]["anchor"]["factor"] == pytest.approx(2.0) and chosen(tmp_path / "anchored")[:2] == first
    record = json.loads(anchor_record_path(tmp_path / "anchored").read_text())
    assert record["anchor"]["factor"] == pytest.approx(2.0) and record["probe"]["reference_ratio"] == pytest.approx(1.0)
    # --replay of this run's transcript takes the factor this run recorded, not one timed now
    replay = search_settings(trained, tmp_path / "replayed", replay=tmp_path / "anchored" / "transcript.jsonl")
    assert recorded_anchor(replay) == (True, record["anchor"])


def test_the_device_half_takes_relative_paths_as_the_readme_writes_them(pack, tmp_path):
    """`unzip -q p.zip -d dev/p && cd dev && pathnas-infer profile p --out timings.json`, and an absolute pack
    with a relative --out: the rounds' child processes work in another folder, so paths must not be relative."""
    import subprocess
    import sys
    import zipfile

    dev = tmp_path / "dev"
    with zipfile.ZipFile(f"{pack}.zip") as archive:
        archive.extractall(dev / "p")
    for pack_arg, out_arg, written in (("p", "timings.json", dev / "timings.json"),
                                       (str(dev / "p"), "sub/t.json", dev / "sub" / "t.json")):
        result = subprocess.run([sys.executable, "-m", "pathnas.deploy.toolkit", "profile", pack_arg, "--out", out_arg,
                                 "--rounds", "2", "--repeats", "3", "--progress", "lines"], cwd=dev,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert read_timings(written, dev / "p")["metadata"]["timing_processes"] == 2


def test_a_pack_times_the_graph_that_ships(pack, tmp_path):
    """One exporter for tables, probes and artifacts: a pack's whole-subnet probe and the shipped model's
    export of the same path (export/artifacts.py) are the same graph, node type by node type."""
    from collections import Counter

    import onnx

    from pathnas.export.artifacts import MODEL_ONNX, export_canonical
    from pathnas.subnet import build_subnet

    manifest = read_pack(pack)
    probe = next(i for i in manifest["items"] if i["kind"] == "net")
    model = build_subnet(manifest["space_config"], probe["arch"])
    meta = {"space_config": manifest["space_config"], "arch": probe["arch"], "task": "classify",
            "classes": [f"c{i}" for i in range(manifest["space_config"]["num_classes"])]}
    shipped = export_canonical(tmp_path, model, meta)["onnx"]

    def op_types(path):
        return Counter(node.op_type for node in onnx.load(str(path)).graph.node)

    assert probe["exporter"] == shipped["exporter"]
    assert op_types(pack / probe["file"]) == op_types(tmp_path / MODEL_ONNX)
