"""Hardware profiles: one YAML file per device in ``pathnas.hardware_profiles``."""
from __future__ import annotations

import platform
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathnas.deploy.machine import cpu_flags, cpu_info
from pathnas.deploy.runners import cuda_device_count
from pathnas.deploy.runtimes import ENGINE_MAX_BATCH, PRECISIONS, RUNTIMES, runtime
from pathnas.errors import ConfigError
from pathnas.io import read_text

PROFILE_PACKAGE = "pathnas.hardware_profiles"


class UnknownDeviceError(ConfigError):
    """No profile has this name or alias."""


class ProfileError(ConfigError):
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
    runtime: Literal[tuple(RUNTIMES)]  # type: ignore[valid-type]  (the registry's: deploy/runtimes.py)
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    batch_size: int = Field(ge=1, description="the batch latency is measured and regress-checked at")
    slide_batch_size: int | None = Field(
        None, ge=1, le=ENGINE_MAX_BATCH,
        description="tiles per inference when pathnas-infer runs slides and folders (default: batch_size); set only "
                    "where measured (benchmarks/slide_throughput.py --batch-sweep)")
    threads: int = Field(ge=1)
    input_sizes: list[int]
    notes: str = ""
    peak_gflops: float | None = Field(None, gt=0, description="published peak, for roofline estimates only")
    memory_bandwidth_gbs: float | None = Field(None, gt=0, description="published peak, for roofline estimates only")
    cpu_match: CpuMatch | None = None
    gpu_match: str | None = Field(None, description="text the CUDA device name must contain (torch-cuda profiles)")

    def runs_here(self) -> bool:
        """Whether this machine can measure the profile.

        GPU runtimes: the runtime imports and finds a CUDA GPU (TensorRT through the CUDA
        runtime library, so no torch is needed); under torch-cuda the GPU's name must also contain
        ``gpu_match`` (case-insensitive). CPU runtimes: the runtime imports and the CPU shows the
        architecture, vendor and instruction-set flags that ``cpu_match`` names (a profile without
        ``cpu_match`` describes a machine that is not this one).
        """
        found = runtime(self.runtime)
        if not found.installed():
            return False
        if not found.times_packs:  # PyTorch on a CUDA GPU
            import torch

            if not torch.cuda.is_available():
                return False
            return self.gpu_match is None or self.gpu_match.lower() in torch.cuda.get_device_name().lower()
        if found.gpu:
            return cuda_device_count() > 0
        if self.cpu_match is None:
            return False
        m = self.cpu_match
        return (
            (m.arch is None or m.arch == platform.machine())
            and (m.vendor is None or m.vendor == cpu_info().get("vendor_id"))
            and set(m.flags) <= cpu_flags()
        )


def _profile_files() -> list[Path]:
    folder = resources.files(PROFILE_PACKAGE)
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_profile(path: str | Path) -> HardwareProfile:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path, "hardware profile"))  # safe: data only, never objects
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
