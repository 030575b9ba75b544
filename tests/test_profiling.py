"""Hardware profiles, the timing protocol, latency tables, the predictor and regression checks."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathnas.deploy import timing as timing_module
from pathnas.deploy.regress import BaselineMismatchError, check_regression, compare, make_baseline, measure_samples
from pathnas.profiling import (
    NoLatencyTableError,
    ProfileError,
    UnknownDeviceError,
    UnknownShapeError,
    list_profiles,
    load_profile,
    load_table,
    measure_model_latency,
    measure_table,
    predictor_for,
    save_table,
)
from pathnas.profiling.profiles import read_profile
from pathnas.profiling.tables import SCHEMA, config_digest
from pathnas.spaces import build_supernet, space_config

TINY = dict(width_mult=0.25, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1))
CLI = [sys.executable, "-m", "pathnas.cli"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_supernet(space_config("shufflenet", **TINY)).eval()


# -- profiles ---------------------------------------------------------------------------------

def test_shipped_profiles_validate_and_aliases_resolve():
    names = {p.name for p in list_profiles()}
    assert {"x86-cpu-ort", "x86-cpu-openvino", "nvidia-gpu-trt", "jetson-orin-nano", "jetson-agx-orin",
            "intel-workstation-openvino"} <= names
    assert load_profile("jetson").name == "jetson-orin-nano"
    assert load_profile("CPU").name == "x86-cpu-ort"
    assert load_profile("jetson").runtime == "tensorrt" and load_profile("jetson").precision == "fp16"


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(UnknownDeviceError, match="unknown device 'raspberry'; known devices .*jetson-orin-nano"):
        load_profile("raspberry")


def test_profile_yaml_errors_name_the_file_and_field(tmp_path):
    good = load_profile("cpu").model_dump(exclude_none=True)
    path = tmp_path / "dev.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**good, "colour": "red"}))
    with pytest.raises(ProfileError, match=r"dev.yaml: invalid hardware profile:\n  colour: unknown key"):
        read_profile(path)
    path.write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "runtime"}))
    with pytest.raises(ProfileError, match="runtime: missing"):
        read_profile(path)
    path.write_text(yaml.safe_dump({**good, "runtime": "coreml"}))
    with pytest.raises(ProfileError, match="runtime"):
        read_profile(path)


# -- timing protocol --------------------------------------------------------------------------

def test_timing_protocol_statistics(monkeypatch):
    clock = {"t": 0.0, "calls": 0}
    durations = [0.001] * 1000  # 1 ms per call ...
    durations[20] = 0.050  # ... with one call hit by interference

    def fake_perf_counter():
        return clock["t"]

    def fn():
        clock["t"] += durations[clock["calls"] % len(durations)]
        clock["calls"] += 1

    monkeypatch.setattr(timing_module.time, "perf_counter", fake_perf_counter)
    result = timing_module.time_callable(fn, warmup_runs=5, warmup_s=0.0, repeats=30, min_sample_s=0.0)
    assert result.inner == 1 and result.runs + result.clipped == 30
    assert result.median_ms == pytest.approx(1.0)
    assert result.mean_ms == pytest.approx(1.0) and result.clipped >= 1  # the outliers do not move the mean
    with pytest.raises(ValueError, match="at least 3 samples"):
        timing_module.time_callable(fn, repeats=2)


# -- tables and the predictor -----------------------------------------------------------------

def hand_made_table(supernet, part_ms=1.0, scale=2.0, offset=0.5, drop_key=None) -> dict:
    config = supernet.config.model_dump(mode="json")
    parts = {p.key: {"median_ms": part_ms, "p90_ms": part_ms} for p in supernet.latency_parts() if p.key != drop_key}
    return {"schema": SCHEMA, "profile": "x86-cpu-ort", "space": "shufflenet", "space_config": config,
            "config_digest": config_digest(config), "metadata": {"cpu_model": "test"}, "parts": parts,
            "overhead": {"model": "linear", "scale": scale, "offset_ms": offset}}


def test_predictor_is_the_sum_of_the_selected_parts_through_the_overhead_model(tiny, tmp_path):
    path = save_table(hand_made_table(tiny), tmp_path / "t.json")
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=path)
    assert predictor.source == "measured-table" and not predictor.is_estimate
    all_ids = tiny.space.decode("0000")  # stride-2 layers only: each id is a 1x1 projection part
    assert predictor.predict_ms(all_ids) == pytest.approx(2.0 * (2 + 4) + 0.5)
    arch = tiny.space.decode("3575")
    assert predictor.predict_ms(arch) == pytest.approx(2.0 * len(tiny.parts_for(arch)) + 0.5)
    assert predictor.describe()["table"] == str(path)


def test_a_shape_the_table_has_not_measured_is_an_error(tiny, tmp_path):
    missing = next(p.key for p in tiny.latency_parts() if p.requires == ((2, 7),))
    path = save_table(hand_made_table(tiny, drop_key=missing), tmp_path / "t.json")
    # refused when the predictor is made, before any search relies on it, never counted as zero
    with pytest.raises(UnknownShapeError, match=re.escape(missing)) as err:
        predictor_for(load_profile("cpu"), tiny, table_path=path)
    assert "pathnas-edge profile --device x86-cpu-ort --space shufflenet --input-size 32" in str(err.value)


def test_a_table_for_another_device_is_refused(tiny, tmp_path):
    path = save_table(hand_made_table(tiny), tmp_path / "t.json")
    with pytest.raises(ValueError, match="measured for device x86-cpu-ort, not x86-cpu-openvino"):
        predictor_for(load_profile("x86-cpu-openvino"), tiny, table_path=path)


def test_table_format_is_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ValueError, match="not a latency table of schema pathnas-latency-table/1"):
        load_table(bad)


def test_a_device_without_a_table_says_what_to_run(tiny):
    with pytest.raises(NoLatencyTableError) as err:
        predictor_for(load_profile("jetson"), tiny)
    message = str(err.value)
    assert "pathnas-edge profile --device jetson-orin-nano --space shufflenet --input-size 32 --width-mult 0.25" in message
    assert "stage_repeats=[1,1,1,1]" in message and "PATHNAS_LATENCY_TABLES/jetson-orin-nano/" in message


def test_roofline_is_labelled_an_estimate(tiny):
    predictor = predictor_for(load_profile("jetson"), tiny, latency_source="roofline")
    ms = predictor.predict_ms("7777")
    assert predictor.is_estimate and predictor.source == "roofline-estimate"
    assert 0 < predictor.predict_ms("3333") < ms
    assert "estimate" in predictor.label(ms) and predictor.describe()["is_estimate"]
    with pytest.raises(ValueError, match="publishes no peak_gflops"):
        predictor_for(load_profile("cpu"), tiny, latency_source="roofline")


def test_measured_table_round_trip(tiny, tmp_path):
    profile = load_profile("cpu")
    table = measure_table(tiny, profile, subnets=5, fit_subnets=3, rounds=1)
    assert table["schema"] == SCHEMA and table["units"].startswith("milliseconds per image")
    assert table["metadata"]["execution_providers"] == ["CPUExecutionProvider"]
    assert table["metadata"]["threads"] == profile.threads and table["metadata"]["versions"]["onnxruntime"]
    assert set(table["parts"]) == {p.key for p in tiny.latency_parts()}
    assert all(v["median_ms"] > 0 and v["p90_ms"] >= v["median_ms"] for v in table["parts"].values())
    assert [r["set"] for r in table["end_to_end"]] == ["fit"] * 3 + ["holdout"] * 2
    assert set(table["accuracy"]) >= {"rmse_ms", "rmspe_pct", "within_5_pct", "within_10_pct", "within_15_pct"}
    path = save_table(table, tmp_path / "table.json")
    predictor = predictor_for(profile, tiny, table_path=path)
    row = table["end_to_end"][0]
    assert predictor.predict_ms(row["arch"]) == pytest.approx(row["predicted_ms"])


# -- regression checks ------------------------------------------------------------------------

def test_compare_is_noise_aware():
    base = [1.0, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.0]
    assert compare([x * 1.05 for x in base], base, tolerance=0.10).passed  # within tolerance
    slow = compare([x * 1.5 for x in base], base, tolerance=0.10)
    assert not slow.passed and slow.ci_low > 1.1
    noisy = compare([0.9, 1.5, 1.0, 1.6, 0.95, 1.55, 1.0, 1.05], base, tolerance=0.10)
    assert noisy.ci_low <= 1.1  # one slow-looking run is not proof


@pytest.fixture(scope="module")
def onnx_model(tiny, tmp_path_factory):
    from pathnas.onnx import export_onnx

    path = tmp_path_factory.mktemp("regress") / "model.onnx"
    export_onnx(tiny.extract("3333"), path, (1, 3, 32, 32), exporters=("legacy",))
    return path


def test_runners_share_one_interface_and_check_what_they_run(onnx_model, tmp_path):
    from pathnas.deploy.runners import open_profile_runner as open_runner

    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    outputs = {}
    for runtime, provider in (("onnxruntime-cpu", "CPUExecutionProvider"), ("openvino-cpu", "OpenVINO CPU")):
        with open_runner(onnx_model, runtime, threads=1) as runner:
            assert runner.input_shape == (None, 3, 32, 32) and runner.fixed_input_shape(2) == (2, 3, 32, 32)
            assert runner.provider.startswith(provider)
            outputs[runtime] = runner.run(x)
    assert outputs["onnxruntime-cpu"].shape == (2, 4)
    np.testing.assert_allclose(outputs["onnxruntime-cpu"], outputs["openvino-cpu"], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match=r"model.xml: runtime onnxruntime-cpu runs .onnx files, not .xml"):
        open_runner(onnx_model.with_suffix(".xml"), "onnxruntime-cpu")
    with pytest.raises(FileNotFoundError, match="missing.engine does not exist"):
        open_runner(tmp_path / "missing.engine", "tensorrt")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_a_tensorrt_engine_without_tensorrt_is_a_clear_error(tmp_path):
    from pathnas.deploy.runners import ProviderError, open_runner

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not used")
    with pytest.raises(ProviderError, match=r"tensorrt, which is not installed here: pip install 'pathnas-edge\[tensorrt\]'"):
        open_runner(engine, "tensorrt")


def test_measure_model_latency_of_a_file_and_of_a_module(tiny, onnx_model):
    profile = load_profile("cpu")
    from_file = measure_model_latency(onnx_model, profile, rounds=1)
    from_module = measure_model_latency(tiny.extract("3333"), profile, (1, 3, 32, 32), rounds=1)
    for result in (from_file, from_module):
        assert result["provider"] == "CPUExecutionProvider" and 0 < result["median_ms"] <= result["p90_ms"]


def test_check_regression_takes_a_baseline_dict(onnx_model):
    profile = load_profile("cpu")
    baseline = make_baseline(onnx_model, profile, measure_samples(onnx_model, profile, rounds=1))
    assert check_regression(onnx_model, profile, baseline, tolerance=1.0, rounds=1).passed
    too_fast = {**baseline, "samples_ms": [v * 0.3 for v in baseline["samples_ms"]]}
    verdict = check_regression(onnx_model, profile, too_fast, rounds=1)
    assert not verdict.passed and verdict.ci_low > 1.1
    with pytest.raises(BaselineMismatchError, match="manifest.json was measured with runtime='openvino-cpu'"):
        check_regression(onnx_model, profile, {**baseline, "runtime": "openvino-cpu"}, source="manifest.json")
    with pytest.raises(ValueError, match="samples_ms must list at least 5"):
        check_regression(onnx_model, profile, {**baseline, "samples_ms": [1.0]})


def run_cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


def test_regress_passes_against_its_own_baseline_and_fails_against_a_too_fast_one(onnx_model, tmp_path):
    baseline = tmp_path / "baseline.json"
    assert run_cli("regress", onnx_model, "--baseline", baseline, "--update-baseline", "--rounds", "2").returncode == 0
    data = json.loads(baseline.read_text())
    assert data["device"] == "x86-cpu-ort" and data["runtime"] == "onnxruntime-cpu" and len(data["samples_ms"]) == 40
    # generous tolerance: this checks the plumbing of a pass, not the machine's steadiness
    ok = run_cli("regress", onnx_model, "--baseline", baseline, "--tolerance", "1.0", "--rounds", "2", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True

    too_fast = {**data, "samples_ms": [s * 0.3 for s in data["samples_ms"]]}
    baseline.write_text(json.dumps(too_fast))
    junit = tmp_path / "latency.xml"
    failed = run_cli("regress", onnx_model, "--baseline", baseline, "--junit", junit, "--rounds", "2")
    assert failed.returncode == 1
    xml = junit.read_text()
    assert 'failures="1"' in xml and "<failure" in xml and "model.onnx@x86-cpu-ort" in xml


def test_regress_refuses_a_baseline_from_another_device(onnx_model, tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"schema": "pathnas-latency-baseline/1", "device": "jetson-orin-nano",
                                    "runtime": "tensorrt", "threads": 1, "batch_size": 1, "samples_ms": [1.0] * 10}))
    result = run_cli("regress", onnx_model, "--baseline", baseline)
    assert result.returncode == 2
    assert "measured with device='jetson-orin-nano'" in result.stderr
