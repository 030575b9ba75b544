"""Hardware profiles, the timing protocol, latency tables, the predictor and regression checks."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pathnas.deploy import timing as timing_module
from pathnas.deploy.regress import BaselineMismatchError, check_regression, compare, make_baseline
from pathnas.deploy.regress_check import RegressCheck
from pathnas.profiling import (
    NoLatencyTableError,
    ProfileError,
    UnknownDeviceError,
    UnknownShapeError,
    list_profiles,
    load_profile,
    load_table,
    measure_table,
    predictor_for,
    save_table,
)
from pathnas.errors import ConfigError
from pathnas.profiling.profiles import read_profile
from pathnas.profiling.tables import SCHEMA, config_digest
from pathnas.spaces import build_supernet, space_config
from cli_helpers import pathnas_edge

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
    good = load_profile("cpu").model_dump(mode="json", exclude_none=True)
    path = tmp_path / "dev.yaml"
    import yaml

    path.write_text(yaml.safe_dump({**good, "colour": "red"}))
    with pytest.raises(ProfileError, match=r"dev.yaml: invalid hardware profile:\n  colour: unknown key"):
        read_profile(path)
    path.write_text(yaml.safe_dump({k: v for k, v in good.items() if k != "runtime"}))
    with pytest.raises(ProfileError, match="runtime: Field required"):
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


def test_a_slow_spell_of_the_machine_moves_no_callable_against_another():
    # Three callables of 1, 2 and 4 ms over 12 passes; passes 4-7 ran 1.5x slower, and one sample
    # was preempted. The pooled median of the fast callable would depend on how its samples fell.
    true_ms = np.array([1.0, 2.0, 4.0])
    speed = np.ones(12)
    speed[4:8] = 1.5
    times = true_ms[:, None] * speed[None, :]
    times[0, 2] *= 10
    level, pass_speed = timing_module.median_polish(np.log(times))
    np.testing.assert_allclose(np.exp(level), true_ms, rtol=1e-9)
    np.testing.assert_allclose(np.exp(pass_speed[4:8]), 1.5, rtol=1e-9)
    # one callable: its plain median
    level, _ = timing_module.median_polish(np.log(np.array([[1.0, 3.0, 2.0]])))
    assert np.exp(level[0]) == pytest.approx(2.0)


def test_time_in_rounds_takes_the_machines_speed_out(monkeypatch):
    clock = {"t": 0.0, "slow": False}
    monkeypatch.setattr(timing_module.time, "perf_counter", lambda: clock["t"])

    def call(ms):
        def fn():
            clock["t"] += ms / 1e3 * (3.0 if clock["slow"] else 1.0)
        return fn

    passes = {"n": 0}

    def advance():  # after each pass; the second round (passes 5-9) runs 3x slower
        passes["n"] += 1
        clock["slow"] = 5 <= passes["n"] - 2 < 10  # 2 warm-ups come first

    protocol = timing_module.TimingProtocol(rounds=3, repeats=5, warmup_s=0.0, min_sample_s=0.0)
    out = timing_module.time_in_rounds({"a": call(1.0), "b": call(0.25)}, protocol, advance=advance)
    assert out["a"]["median_ms"] == pytest.approx(1.0) and out["b"]["median_ms"] == pytest.approx(0.25)
    assert max(out["a"]["rounds_median_ms"]) == pytest.approx(3.0)  # the slow round, kept on record


def test_a_process_that_times_shares_one_onnxruntime_thread_pool(onnx_model):
    script = (
        "import numpy as np\n"
        "from pathnas.deploy import runners, runtimes\n"
        "print(runners.use_shared_thread_pool(2), runners.use_shared_thread_pool(2), runners.use_shared_thread_pool(1))\n"
        "x = np.zeros((1, 3, 32, 32), np.float32)\n"
        f"a, b = (runtimes.open_profile_runner({str(onnx_model)!r}, 'onnxruntime-cpu', t) for t in (2, 1))\n"
        "assert a.run(x).shape == b.run(x).shape == (1, 4)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=onnx_model.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False"]
    assert "already runs ONNX Runtime on a shared pool of 2 threads, not 1" in done.stderr


def test_an_onnxruntime_without_shared_pools_times_on_pools_that_do_not_spin(onnx_model):
    script = (
        "import numpy as np, onnxruntime as ort\n"
        "from pathnas.deploy import runners, runtimes\n"
        "del ort.capi._pybind_state.set_global_thread_pool_sizes  # as a release without it\n"
        "made = []\n"
        "Options = ort.SessionOptions\n"
        "class Seen(Options):\n"
        "    def add_session_config_entry(self, key, value):\n"
        "        made.append((key, value)); return super().add_session_config_entry(key, value)\n"
        "ort.SessionOptions = Seen\n"
        "print(runners.use_shared_thread_pool(2))\n"
        f"r = runtimes.open_profile_runner({str(onnx_model)!r}, 'onnxruntime-cpu', 2)\n"
        "assert r.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4)\n"
        "print(made)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=onnx_model.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["False", "[('session.intra_op.allow_spinning', '0')]"]
    assert "cannot share one thread pool between sessions" in done.stderr


def test_a_timing_beside_other_load_says_so():
    from pathnas.deploy.machine import OtherLoad, busy_warning

    assert busy_warning(None) is None and busy_warning(0.1) is None
    assert "0.67 CPU cores" in busy_warning(0.67)
    cores = OtherLoad().cores()
    assert cores is None or cores >= 0.0


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
    assert "pathnas-edge profile measure --device x86-cpu-ort --space shufflenet --input-size 32" in str(err.value)


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
    # one message: the three steps of a pack for a device without the toolchain, or one command over SSH
    knobs = "--space shufflenet --input-size 32 --width-mult 0.25 --option 'stage_repeats=[1,1,1,1]'"
    assert f"1. pathnas-edge profile pack --device jetson-orin-nano {knobs} --out " in message
    assert "2. pathnas-infer profile " in message and "3. pathnas-edge profile assemble " in message
    assert f"pathnas-edge profile measure --device jetson-orin-nano {knobs} --remote USER@DEVICE" in message
    assert "PATHNAS_LATENCY_TABLES/jetson-orin-nano" in message and "roofline" in message


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
    # anchored: the reference model timed in the same rounds as the parts, with what it promises
    import hashlib

    from pathnas.profiling.reference import reference_model_bytes

    anchor = table["anchor"]
    assert anchor["reference_ms"] > 0 and anchor["tolerance_pct"] >= 10
    assert anchor["reference_sha256"] == hashlib.sha256(reference_model_bytes()).hexdigest()
    assert "reference" not in {r["arch"] for r in table["end_to_end"]} and "speed_state" in table["metadata"]


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
    from pathnas.deploy.runtimes import open_profile_runner as open_runner

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
    from pathnas.deploy.runners import ProviderError
    from pathnas.deploy.runtimes import open_runner

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not used")
    with pytest.raises(ProviderError, match=r"tensorrt, which is not installed here: pip install 'pathnas-edge\[tensorrt\]'"):
        open_runner(engine, "tensorrt")


def test_a_path_is_timed_by_the_device_half_in_the_profiles_runtime(tiny):
    from pathnas.profiling.measure import time_items
    from pathnas.profiling.pack import net_items

    arch = tiny.space.decode("3333")
    manifest, timings = time_items(load_profile("cpu"), tiny, net_items(tiny, [arch], lambda j: "probe"), rounds=1,
                                   repeats=3)
    result = timings["results"]["net:3333"]
    assert [i["arch"] for i in manifest["items"]] == ["3333"] and manifest["items"][0]["file"].endswith(".onnx")
    assert timings["metadata"]["execution_providers"] == ["CPUExecutionProvider"]
    assert 0 < result["median_ms"] <= result["p90_ms"] and result["runs"] == 3


# Latency samples as a steady machine gives them (1 ms +- 2 %), for the regression logic: no test
# depends on how fast this machine is, or on how steady it is while the tests run.
STEADY_MS = list(1.0 + 0.02 * np.random.default_rng(0).standard_normal(40))


def given_samples(monkeypatch, factor: float, machine: float = 1.0) -> None:
    """The regression check's timings replaced by given ones: the model takes STEADY_MS x ``factor``
    x ``machine``, the reference model timed beside it STEADY_MS x ``machine`` (``machine``: how much
    slower the whole machine is than when the baseline was taken)."""
    from pathnas.deploy import regress

    model = [factor * machine * v for v in STEADY_MS]
    monkeypatch.setattr(regress, "measure_samples", lambda *a, **k: model)
    monkeypatch.setattr(regress, "measure_with_reference", lambda *a, **k: (model, [machine * v for v in STEADY_MS]))


def test_check_regression_takes_a_baseline_dict(onnx_model, monkeypatch):
    profile = load_profile("cpu")
    given_samples(monkeypatch, 1.0)
    baseline = make_baseline(onnx_model, profile, STEADY_MS)
    assert check_regression(onnx_model, profile, baseline, RegressCheck(tolerance=0.10, rounds=1)).passed
    given_samples(monkeypatch, 1.05)  # slower, but within the tolerance
    assert check_regression(onnx_model, profile, baseline, RegressCheck(tolerance=0.10, rounds=1)).passed
    given_samples(monkeypatch, 1.3)  # a real 30 % slowdown
    verdict = check_regression(onnx_model, profile, baseline, RegressCheck(tolerance=0.10, rounds=1))
    assert not verdict.passed and verdict.ci_low > 1.1 and verdict.ratio == pytest.approx(1.3, rel=0.01)
    with pytest.raises(BaselineMismatchError, match="manifest.json was measured with runtime='openvino-cpu'"):
        check_regression(onnx_model, profile, {**baseline, "runtime": "openvino-cpu"}, source="manifest.json")
    with pytest.raises(ValueError, match="samples_ms must list at least 5"):
        check_regression(onnx_model, profile, {**baseline, "samples_ms": [1.0]})


def run_cli(*args):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)



def test_regress_passes_against_its_own_baseline_and_fails_on_a_slowdown(onnx_model, tmp_path, monkeypatch, capsys):
    baseline = tmp_path / "baseline.json"
    given_samples(monkeypatch, 1.0)
    code, _, err = pathnas_edge("regress", onnx_model, "--baseline", baseline, "--update-baseline")
    assert code == 0, err
    data = json.loads(baseline.read_text())
    assert data["device"] == "x86-cpu-ort" and data["runtime"] == "onnxruntime-cpu"
    assert data["samples_ms"] == [round(v, 6) for v in STEADY_MS]
    code, out, err = pathnas_edge("regress", onnx_model, "--baseline", baseline, "--json")
    assert code == 0, err
    assert json.loads(out)["passed"] is True
    given_samples(monkeypatch, 1.0, machine=1.4)  # the whole machine is slower today, the model is not
    code, out, err = pathnas_edge("regress", onnx_model, "--baseline", baseline, "--json")
    assert code == 0, err
    assert json.loads(out)["passed"] is True

    given_samples(monkeypatch, 1.5)  # the model is now 50 % slower than its baseline
    junit = tmp_path / "latency.xml"
    code, _, _ = pathnas_edge("regress", onnx_model, "--baseline", baseline, "--junit", junit)
    assert code == 1
    xml = junit.read_text()
    assert 'failures="1"' in xml and "<failure" in xml and "model.onnx@x86-cpu-ort" in xml


def test_regress_refuses_a_baseline_from_another_device(onnx_model, tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"schema": "pathnas-latency-baseline/1", "device": "jetson-orin-nano",
                                    "runtime": "tensorrt", "threads": 1, "batch_size": 1, "samples_ms": [1.0] * 10}))
    result = run_cli("regress", onnx_model, "--baseline", baseline)
    assert result.returncode == 2
    assert "measured with device='jetson-orin-nano'" in result.stderr


# -- torch-cuda: PyTorch modules timed on a torch device (the same code runs here on the CPU) -----

def test_torch_item_times_a_module_on_the_device_it_is_given(tiny):
    from pathnas.profiling.timed import TorchItem, time_torch_modules

    item = TorchItem(tiny.extract("3333"), (1, 3, 32, 32), "cpu", "fp32")
    assert item.sync is None and item.provider.startswith("torch ") and "CPU fp32" in item.provider
    item.call()
    profile = load_profile("h100-torch-cuda").model_copy(update={"precision": "fp32"})
    with pytest.MonkeyPatch.context() as mp:
        from pathnas.profiling import timed

        mp.setattr(timed, "TORCH_DEVICES", {"torch-cuda": "cpu"})
        results, providers = time_torch_modules(profile, [("a", lambda: tiny.extract("3333"), (1, 3, 32, 32))],
                                                timing_module.TimingProtocol(rounds=2, repeats=3), seed=0)
    result = results["a"]
    assert len(result["rounds_median_ms"]) == 2 and providers[0].endswith("CPU fp32")
    assert min(result["rounds_median_ms"]) - 1e-6 <= result["median_ms"] <= max(result["rounds_median_ms"]) + 1e-6
    assert result["runs"] == 6  # 3 samples in each of 2 rounds, pooled
    with pytest.raises(ValueError, match="PyTorch timing supports fp32, fp16"):
        TorchItem(tiny.extract("3333"), (1, 3, 32, 32), "cpu", "int8")


def test_a_torch_cuda_table_is_measured_with_the_torch_timer(tiny, monkeypatch):
    from pathnas.profiling import timed

    profile = load_profile("h100-torch-cuda").model_copy(update={"precision": "fp32"})
    monkeypatch.setattr(timed, "TORCH_DEVICES", {"torch-cuda": "cpu"})  # the GPU's code path, on this CPU
    table = measure_table(tiny, profile, subnets=4, fit_subnets=3, rounds=1)
    assert table["profile"] == "h100-torch-cuda" and table["metadata"]["runtime"] == "torch-cuda"
    assert len(table["metadata"]["execution_providers"]) == 1
    assert table["metadata"]["execution_providers"][0].endswith("CPU fp32")
    assert set(table["parts"]) == {p.key for p in tiny.latency_parts()}
    assert [r["set"] for r in table["end_to_end"]] == ["fit"] * 3 + ["holdout"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_timing_on_the_gpu(tiny):
    from pathnas.profiling.timed import TorchItem

    item = TorchItem(tiny.extract("3333"), (1, 3, 32, 32), "cuda", "fp16")
    assert item.sync is torch.cuda.synchronize and "(CUDA graph) fp16" in item.provider and item.graph is not None
    assert next(item.module.parameters()).is_cuda and item.x.dtype == torch.float16
    item.call()
    profile = load_profile("h100-torch-cuda").model_copy(update={"gpu_match": None})  # any CUDA GPU
    from pathnas.profiling.timed import time_torch_modules

    results, providers = time_torch_modules(profile, [("a", lambda: tiny.extract("3333"), (1, 3, 32, 32))],
                                            timing_module.TimingProtocol(rounds=1, repeats=3), seed=0)
    assert "(CUDA graph) fp16" in providers[0] and results["a"]["median_ms"] > 0


def test_the_h100_profile_runs_only_on_an_h100(monkeypatch):
    profile = load_profile("h100")
    assert profile.name == "h100-torch-cuda" and profile.runtime == "torch-cuda" and profile.gpu_match == "H100"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not profile.matches_here()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert not profile.matches_here()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert profile.matches_here()


def test_torch_cuda_times_modules_not_files(tiny, tmp_path):
    from pathnas.profiling.pack import plan_table, write_pack

    items, _ = plan_table(tiny, 4, 3)
    with pytest.raises(ConfigError, match="runs torch-cuda, which times PyTorch modules, not files"):
        write_pack(tiny, load_profile("h100-torch-cuda"), items, tmp_path / "pack")
    assert not (tmp_path / "pack").exists()


# -- calibration: the logic on given samples -----------------------------------------------------

def test_a_uniform_drift_is_fitted_as_one_factor():
    from pathnas.profiling.calibrate import fit_calibration

    parts = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5])
    before = 0.9 * parts + 0.1  # the table's overhead model: scale 0.9, offset 0.1
    measured = 0.71 * before * np.array([1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99])
    fit = fit_calibration(parts, before, measured, {"scale": 0.9, "offset_ms": 0.1})
    assert fit["model"] == "scale" and fit["factor"] == pytest.approx(0.71, rel=0.01)
    assert fit["scale"] == pytest.approx(0.9 * fit["factor"]) and fit["offset_ms"] == pytest.approx(0.1 * fit["factor"])
    loo = np.array(fit["loo_predicted_ms"])
    assert np.all(np.abs(loo / measured - 1) < 0.05)  # every path within 5 % of a fit that did not see it
    assert np.all(np.abs(before / measured - 1) > 0.3)


def test_one_disturbed_path_does_not_move_the_factor():
    from pathnas.profiling.calibrate import fit_calibration

    parts = np.linspace(1, 4, 8)
    measured = 0.7 * parts
    measured[3] *= 3  # timed during a burst of other load
    fit = fit_calibration(parts, parts, measured, {"scale": 1.0, "offset_ms": 0.0})
    assert fit["model"] == "scale" and fit["factor"] == pytest.approx(0.7)


def test_a_changed_fixed_cost_is_fitted_as_a_new_line():
    from pathnas.profiling.calibrate import fit_calibration

    parts = np.linspace(1, 4, 8)
    measured = 0.5 * parts + 2.0  # the runtime's per-call cost grew, the parts got faster
    fit = fit_calibration(parts, parts, measured, {"scale": 1.0, "offset_ms": 0.0})
    assert fit["model"] == "linear"
    assert fit["scale"] == pytest.approx(0.5) and fit["offset_ms"] == pytest.approx(2.0)
    assert fit["loo_mape_pct"]["linear"] < 1e-6 < fit["loo_mape_pct"]["scale"]
    with pytest.raises(ValueError, match="at least 3 are needed"):
        fit_calibration(parts[:2], parts[:2], measured[:2], {"scale": 1.0, "offset_ms": 0.0})


def test_spearman_is_the_rank_correlation():
    from pathnas.profiling.calibrate import spearman

    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a ** 3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)


# -- the probe: it checks and reports, it decides nothing ------------------------------------------

def anchored_table(supernet, reference_ms: float = 1.0, tolerance_pct: float = 10.0) -> dict:
    """``hand_made_table`` with an anchor: the reference model timed at 1 ms beside the parts."""
    return {**hand_made_table(supernet), "metadata": {"cpu_model": "test", "date": "2026-11-02T10:00:00+00:00"},
            "anchor": {"reference_ms": reference_ms, "reference_spread_pct": 1.0, "tolerance_pct": tolerance_pct}}


def probe_timings(predictor, archs, path_factor: float, reference_factor: float | None, load: float | None) -> dict:
    """Timings as a probe reads them: each path ``path_factor`` x its prediction, the reference
    ``reference_factor`` x its time in the table, ``load`` cores of other programs meanwhile."""
    results = {f"net:{a.code}": {"median_ms": path_factor * predictor.table_ms(a)} for a in archs}
    if reference_factor is not None:
        results["reference"] = {"median_ms": reference_factor * predictor.table["anchor"]["reference_ms"]}
    return {"results": results, "metadata": {"other_load_cores": load}}


@pytest.mark.parametrize("paths, reference, load, verdict", [
    (2.0, 2.0, 1.5, "busy"),            # a busy machine: nothing can be told
    (1.05, 0.97, 0.0, "holds"),
    (2.0, 2.0, 0.0, "machine-moved"),   # the reference moved with the paths: re-anchoring helps
    (2.0, 1.0, 0.0, "table-off"),       # the paths moved alone: the table is wrong here
])
def test_the_probe_tells_a_busy_machine_a_moved_one_and_a_wrong_table_apart(tiny, tmp_path, paths, reference, load,
                                                                           verdict):
    from pathnas.profiling.probe import judge, probe_archs, probe_line, reanchored

    path = save_table(anchored_table(tiny), tmp_path / "t.json")
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=path)
    archs = probe_archs(predictor, 2)
    assert not {a.code for a in archs} & {r["arch"] for r in predictor.table.get("end_to_end", [])}
    report = judge(predictor, archs, probe_timings(predictor, archs, paths, reference, load), load_average=0.1)
    assert report["verdict"] == verdict and report["path_ratio"] == pytest.approx(paths)
    assert report["reference_ratio"] == pytest.approx(reference)
    level, line = probe_line(report, path)
    assert ("pathnas-edge profile check " + str(path) in line) == (verdict in ("machine-moved", "table-off"))
    assert ("machine is busy" in line) == (verdict == "busy") and "\n" not in line
    assert predictor.predict_ms(archs[0]) == predictor.table_ms(archs[0])  # the probe changed nothing
    anchor = reanchored(report)
    assert anchor["factor"] == (1.0 if verdict == "busy" else pytest.approx(reference))


@pytest.mark.parametrize("anchored, reference, verdict", [(True, 1.04, "holds"), (True, 1.5, "machine-moved"),
                                                          (False, None, "unanchored-holds")])
def test_the_start_up_probe_times_the_reference_alone_where_the_table_has_one(tiny, tmp_path, monkeypatch, anchored,
                                                                             reference, verdict):
    """A search's probe exports no path of an anchored table (each costs seconds of export): the reference's
    ratio alone tells holds from machine-moved. A table without a reference time still needs paths."""
    from pathnas.profiling import probe

    table = anchored_table(tiny) if anchored else hand_made_table(tiny)
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=save_table(table, tmp_path / "t.json"))
    timed = []

    def time_now(predictor, archs, rounds):
        timed.append(len(archs))
        return probe_timings(predictor, archs, 1.0, reference, 0.0)

    monkeypatch.setattr(probe, "time_probe", time_now)
    report = probe.probe_table(predictor)
    assert timed == [0 if anchored else probe.UNANCHORED_PROBE_PATHS] and report["verdict"] == verdict
    level, line = probe.probe_line(report, "t.json")
    assert ("probe paths" in line) == (not anchored) and ("profile check t.json" in line) == (verdict == "machine-moved")


def test_a_table_without_an_anchor_is_judged_on_its_paths_and_cannot_be_reanchored(tiny, tmp_path):
    from pathnas.profiling.probe import judge, probe_archs, reanchored

    path = save_table(hand_made_table(tiny), tmp_path / "t.json")  # measured before tables timed the reference
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=path)
    archs = probe_archs(predictor, 2)
    report = judge(predictor, archs, probe_timings(predictor, archs, 1.3, None, 0.0))
    assert report["verdict"] == "unanchored-off" and report["reference_ratio"] is None
    with pytest.raises(ConfigError, match="no reference time"):
        reanchored(report)


def test_a_reanchored_table_says_so_wherever_its_figures_are_shown(tiny, tmp_path):
    path = save_table(anchored_table(tiny), tmp_path / "t.json")
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=path)
    before = predictor.predict_ms("3333")
    predictor.use_anchor({"factor": 1.07})
    assert predictor.predict_ms("3333") == pytest.approx(1.07 * before)
    assert "table of 2026-11-02 × 1.07 by the reference" in predictor.describe()["note"]


def test_a_search_names_what_differs_from_the_state_the_table_was_measured_in(tiny, tmp_path, monkeypatch):
    from pathnas.profiling import probe

    table = anchored_table(tiny)
    table["metadata"] = {**table["metadata"], "threads": 2, "versions": {"onnxruntime": "1.0.0"},
                         "speed_state": {"cpu_governor": "performance", "nvpmodel": "NV Power Mode: MAXN"}}
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=save_table(table, tmp_path / "t.json"))
    now = {"cpu_model": "test", "threads": 2, "versions": {"onnxruntime": "1.18.0"},
           "speed_state": {"cpu_governor": "powersave", "nvpmodel": "NV Power Mode: MAXN"}}
    monkeypatch.setattr(probe, "machine_metadata", lambda profile: now)
    line = probe.state_line(predictor)
    assert "onnxruntime 1.0.0 then, 1.18.0 now" in line and "cpu_governor performance then, powersave now" in line
    assert "nvpmodel" not in line and "threads" not in line and "pathnas-edge profile check" in line
    monkeypatch.setattr(probe, "machine_metadata", lambda profile: {**now, **{k: table["metadata"][k] for k in
                                                                             ("versions", "speed_state")}})
    assert probe.state_line(predictor) is None


# -- the commands --------------------------------------------------------------------------------

def test_profile_measures_by_default_and_calibrate_refits_the_table(tiny, tmp_path, monkeypatch, capsys):
    knobs = ["--space", "shufflenet", "--input-size", "32", "--width-mult", "0.25", "--num-classes", "4",
             "--option", "stage_repeats=[1,1,1,1]"]
    table_path = tmp_path / "table.json"
    # `profile --device ...` without a subcommand still measures, as before `profile` became a group
    code, out, err = pathnas_edge("profile", "--device", "cpu", *knobs, "--subnets", "4",
                         "--fit-subnets", "3", "--rounds", "1", "--out", table_path, "--json")
    assert code == 0, err
    assert json.loads(out)["table"] == str(table_path)
    # calibrate a table of known figures: a table measured from 3 fitting subnets on a busy machine
    # can predict nonsense, and this test must not depend on the machine's speed
    table_path = save_table(hand_made_table(tiny), tmp_path / "hand_made.json")
    table = load_table(table_path)
    out_path = tmp_path / "calibrated.json"
    code, out, err = pathnas_edge("profile", "calibrate", "--device", "cpu", *knobs, "--table",
                         table_path, "--out", out_path, "--subnets", "4", "--holdout", "0", "--rounds", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["source_table"] == str(table_path) and report["model"] in ("scale", "linear")
    assert set(report["before"]) >= {"mape_pct", "within_10_pct", "spearman"} and report["after"]["subnets"] == 4
    calibrated = load_table(out_path)
    record = calibrated["calibration"]
    assert calibrated["parts"] == table["parts"] and record["previous_overhead"] == table["overhead"]
    # calibration paths are new: none was measured end to end by the table
    assert not {r["arch"] for r in record["subnets"]} & {r["arch"] for r in table.get("end_to_end", [])}
    predictor = predictor_for(load_profile("cpu"), tiny, table_path=out_path)  # search --latency-table uses it
    for r in record["subnets"]:
        assert predictor.predict_ms(r["arch"]) == pytest.approx(r["predicted_after_ms"])
    code, _, err = pathnas_edge("profile", "calibrate", "--device", "jetson", *knobs, "--out", out_path)
    assert code == 2 and "this machine cannot measure jetson-orin-nano" in err


def test_a_session_that_must_not_spin_leaves_the_cpu_to_other_threads(onnx_model):
    from pathnas.deploy.runtimes import open_runner

    key = "session.intra_op.allow_spinning"
    with open_runner(onnx_model, "onnxruntime", threads=2, spin=False) as quiet:
        assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    with open_runner(onnx_model, "onnxruntime", threads=2) as default:
        with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spin
            default.session.get_session_options().get_session_config_entry(key)


def test_regress_times_the_model_beside_the_reference_in_a_process_of_its_own(onnx_model, tmp_path):
    from pathnas.deploy.device import DeviceSettings
    from pathnas.deploy.regress import measure_with_reference
    from pathnas.profiling.reference import write_reference_model

    reference = write_reference_model(tmp_path / "reference.onnx")
    settings = DeviceSettings("x86-cpu-ort", "onnxruntime-cpu", "fp32", threads=2)
    model_ms, reference_ms = measure_with_reference(onnx_model, reference, settings, rounds=2, repeats=5)
    assert len(model_ms) == len(reference_ms) == 10 and min(model_ms + reference_ms) > 0
    with pytest.raises(ConfigError, match="beside the reference model failed: model .*missing.onnx does not exist"):
        measure_with_reference(tmp_path / "missing.onnx", reference, settings, rounds=2, repeats=5)


def test_profile_check_reports_stored_reanchored_and_refitted_and_writes_nothing(tiny, tmp_path):
    path = save_table(anchored_table(tiny), tmp_path / "t.json")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = pathnas_edge("profile", "check", path, "--paths", "3", "--rounds", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["rows"]) == {"stored", "re-anchored", "refitted"} and len(report["paths"]) == 3
    assert all(0 <= r["within_10_pct"] <= 100 for r in report["rows"].values())
    assert report["reference_now_ms"] > 0 and report["verdict"] in ("busy", "holds", "machine-moved", "table-off")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    code, out, err = pathnas_edge("profile", "check", path, "--paths", "3", "--rounds", "1")
    assert code == 0 and "re-anchored" in out and "±10%" in out, err
