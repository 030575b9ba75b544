"""The runtime registry (deploy/runtimes.py) is complete: every runtime that runs exported files has a
runner, an export, a profile value and an install extra, and every list of allowed values is built
from it. A runtime added to the registry without one of them fails here, naming what is missing."""
from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path

import pytest

from pathnas.deploy import runtimes
from pathnas.deploy.runners import ModelRunner

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}


@pytest.mark.parametrize("name", list(runtimes.RUNTIMES))
def test_every_runtime_has_a_runner_an_export_a_profile_value_and_an_install_extra(name):
    from pathnas.export.artifacts import EXPORTERS
    from pathnas.profiling.profiles import HardwareProfile

    runtime = runtimes.RUNTIMES[name]
    assert name in typing.get_args(HardwareProfile.model_fields["runtime"].annotation), \
        f"hardware profiles do not accept runtime {name}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for backend in runtime.backends:
        extra = [] if backend.extra is None else project["optional-dependencies"].get(backend.extra)
        assert extra is not None, f"{backend.name}: pyproject.toml has no extra {backend.extra!r}"
        missing = set(backend.distributions) - _requirement_names(project["dependencies"] + extra)
        assert not missing, f"{backend.name}: extra {backend.extra or '(base)'} does not bring {', '.join(missing)}"
        if runtime.times_packs or runtime.bundles:  # it runs exported files
            assert backend.runner is not None and "open" in vars(backend.runner), \
                f"{backend.name}: no runner class with its own open() (deploy/runners.py)"
            assert issubclass(backend.runner, ModelRunner)
            assert backend.format in EXPORTERS, f"{backend.name}: no export function for format {backend.format!r}"
            assert set(backend.precisions) <= set(runtimes.PRECISIONS) and backend.suffixes
    if runtime.bundles:
        assert runtime.bundles in runtime.backends


def test_the_lists_of_allowed_values_are_the_registrys():
    from pathnas.deploy.infer import add_arguments
    from pathnas.deploy.manifest import BACKENDS, RUNTIMES
    from pathnas.export.artifacts import EXPORTERS
    from pathnas.settings import PipelineSettings

    assert set(EXPORTERS) == set(runtimes.FORMATS)
    assert PipelineSettings().formats == runtimes.FORMATS
    assert set(RUNTIMES) == {n for n, r in runtimes.RUNTIMES.items() if r.bundles}
    assert set(BACKENDS) == {b.name for b in runtimes.BACKENDS.values() if b.runner}
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    choice = next(a for a in parser._actions if "--runtime" in a.option_strings)
    assert choice.choices == ["auto", *runtimes.BUNDLE_BACKENDS]


def test_an_unknown_runtime_or_backend_is_one_error_naming_the_known_ones(tmp_path):
    from pathnas.errors import ConfigError

    with pytest.raises(ConfigError, match="runtime 'litert': allowed values are " + ", ".join(runtimes.RUNTIMES)):
        runtimes.open_profile_runner(tmp_path / "m.onnx", "litert")
    with pytest.raises(ConfigError, match="backend 'torch': allowed values are " + ", ".join(runtimes.FILE_BACKENDS)):
        runtimes.open_runner(tmp_path / "m.onnx", "torch")
    with pytest.raises(ConfigError, match="format 'tflite': allowed values are " + ", ".join(runtimes.FORMATS)):
        runtimes.backend_of_format("tflite")
    with pytest.raises(runtimes.ProviderError, match="torch-cuda times PyTorch modules"):
        runtimes.open_profile_runner(tmp_path / "m.onnx", "torch-cuda")


# -- the device record (deploy/device.py) ---------------------------------------------------------

def test_one_device_record_reads_a_profile_a_manifest_a_pack_and_a_request():
    from pathnas.deploy.device import DeviceSettings
    from pathnas.profiling import load_profile

    device = load_profile("cpu").device
    assert device.runtime == "onnxruntime-cpu" and device.tiles_per_batch == 8 and device.cpu_match.flags == ("avx2",)
    for keys in (DeviceSettings.MANIFEST_FIELDS, DeviceSettings.PACK_FIELDS, DeviceSettings.RUN_FIELDS, None):
        again = DeviceSettings.from_dict({**device.to_dict(keys), "aliases": ["ignored"]}, "x")
        assert all(getattr(again, k) == getattr(device, k) for k in keys or device.to_dict())


@pytest.mark.parametrize("change, message", [
    ({"threads": "2"}, "m.json: profile.threads '2' is not an int"),
    ({"threads": True}, "profile.threads True is not an int"),
    ({"batch_size": 0}, "profile.batch_size 0 must be at least 1"),
    ({"runtime": "coreml"}, "runtime 'coreml': allowed values are onnxruntime-cpu, openvino-cpu, tensorrt"),
    ({"precision": "int4"}, "precision 'int4': allowed values are fp32, fp16, int8"),
    ({"cpu_match": {"flags": "avx2"}}, "profile.cpu_match"),
    ({"name": None}, "profile.name is missing"),
])
def test_a_device_record_that_does_not_check_names_the_field(change, message):
    from pathnas.deploy.device import DeviceSettings
    from pathnas.errors import ConfigError

    good = {"name": "d", "runtime": "onnxruntime-cpu", "precision": "fp32", "threads": 2}
    with pytest.raises(ConfigError, match=re.escape(message)):
        DeviceSettings.from_dict({**good, **change}, "m.json")


def test_one_check_says_whether_this_machine_is_the_device(monkeypatch):
    from pathnas.deploy import device as device_module
    from pathnas.deploy.device import CpuMatch, DeviceSettings
    from pathnas.profiling import load_profile

    monkeypatch.setattr(device_module, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(device_module.platform, "machine", lambda: "x86_64")
    cpu = DeviceSettings("c", "onnxruntime-cpu", "fp32", 2, cpu_match=CpuMatch("x86_64", None, ("avx2",)))
    assert cpu.matches_here() and cpu.mismatches() == []
    wider = DeviceSettings("c", "onnxruntime-cpu", "fp32", 2, cpu_match=CpuMatch("x86_64", None, ("avx512f",)))
    assert not wider.matches_here() and wider.mismatches() == ["the CPU lacks avx512f"]
    assert not DeviceSettings("c", "onnxruntime-cpu", "fp32", 2).matches_here()  # names no CPU: another machine
    jetson = load_profile("jetson-orin-nano").device
    assert "GPU NVIDIA H100 80GB HBM3, the profile wants one named *Orin*" in jetson.mismatches(lambda: "NVIDIA H100 80GB HBM3")
    assert "no NVIDIA GPU found, the profile wants one named *Orin*" in jetson.mismatches(lambda: None)
    assert "CPU architecture x86_64, the profile wants aarch64" in jetson.mismatches(lambda: None)
