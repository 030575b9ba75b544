"""Hardware profiles: one YAML file per device in ``pathnas.hardware_profiles``."""
from __future__ import annotations

import platform
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILE_PACKAGE = "pathnas.hardware_profiles"


class UnknownDeviceError(ValueError):
    """No profile has this name or alias."""


class ProfileError(ValueError):
    """A profile file that does not validate; names the file and the field."""


class CpuMatch(BaseModel):
    """What this machine's CPU must show for the profile to be measurable here."""

    model_config = ConfigDict(extra="forbid")
    arch: str | None = None
    vendor: str | None = None
    flags: list[str] = Field(default_factory=list)


class HardwareProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    aliases: list[str] = Field(default_factory=list)
    description: str
    runtime: Literal["onnxruntime-cpu", "openvino-cpu", "tensorrt", "torch-cuda"]
    precision: Literal["fp32", "fp16", "int8"]
    batch_size: int = Field(ge=1)
    threads: int = Field(ge=1)
    input_sizes: list[int]
    notes: str = ""
    peak_gflops: float | None = Field(None, gt=0, description="published peak, for roofline estimates only")
    memory_bandwidth_gbs: float | None = Field(None, gt=0, description="published peak, for roofline estimates only")
    cpu_match: CpuMatch | None = None

    def runs_here(self) -> bool:
        """Whether this machine can measure the profile.

        GPU runtimes: the runtime imports and finds a CUDA GPU (TensorRT through the CUDA
        runtime library, so no torch is needed). CPU runtimes: the runtime imports and the CPU
        shows the architecture, vendor and instruction-set flags that ``cpu_match`` names
        (a profile without ``cpu_match`` describes a machine that is not this one).
        """
        import importlib.util

        if self.runtime == "torch-cuda":
            try:
                import torch
            except ImportError:
                return False
            return torch.cuda.is_available()
        if self.runtime == "tensorrt":
            from pathnas.export.runtimes import CudaRuntime, ProviderError

            if importlib.util.find_spec("tensorrt") is None:
                return False
            try:
                CudaRuntime()
            except ProviderError:
                return False
            return True
        module = {"onnxruntime-cpu": "onnxruntime", "openvino-cpu": "openvino"}[self.runtime]
        if self.cpu_match is None or importlib.util.find_spec(module) is None:
            return False
        cpu = _cpu_info()
        m = self.cpu_match
        return (
            (m.arch is None or m.arch == platform.machine())
            and (m.vendor is None or m.vendor == cpu.get("vendor_id"))
            and set(m.flags) <= set(cpu.get("flags", "").split())
        )


@lru_cache(maxsize=1)
def _cpu_info() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpu_info().get("model name") or platform.processor() or platform.machine()


def _profile_files() -> list[Path]:
    folder = resources.files(PROFILE_PACKAGE)
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_profile(path: str | Path) -> HardwareProfile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of fields")
    try:
        return HardwareProfile(**data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            field = ".".join(map(str, e["loc"]))
            if e["type"] == "extra_forbidden":
                lines.append(f"{field}: unknown key (allowed: {', '.join(HardwareProfile.model_fields)})")
            elif e["type"] == "missing":
                lines.append(f"{field}: missing")
            else:
                lines.append(f"{field}: {e['msg']}")
        raise ProfileError(f"{path}: invalid hardware profile:\n  " + "\n  ".join(lines)) from None


def list_profiles() -> list[HardwareProfile]:
    return [read_profile(p) for p in _profile_files()]


def load_profile(name: str) -> HardwareProfile:
    """The profile with this name or alias (case-insensitive), or a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return read_profile(name)
    wanted = name.lower()
    profiles = list_profiles()
    for profile in profiles:
        if wanted == profile.name.lower() or wanted in (a.lower() for a in profile.aliases):
            return profile
    known = ", ".join(f"{p.name} ({', '.join(p.aliases)})" if p.aliases else p.name for p in profiles)
    raise UnknownDeviceError(f"unknown device {name!r}; known devices (aliases): {known}")
