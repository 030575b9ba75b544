"""Hardware profiles: one YAML file per device in ``pathnas.hardware_profiles``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pathnas.deploy.device import CpuMatch, DeviceSettings
from pathnas.deploy.runtimes import ENGINE_MAX_BATCH, PRECISIONS, RUNTIMES, TORCH, runtime
from pathnas.errors import ConfigError
from pathnas.io import read_text
from pathnas.settings import config_error

PROFILE_PACKAGE = "pathnas.hardware_profiles"


class UnknownDeviceError(ConfigError):
    """No profile has this name or alias."""


class ProfileError(ConfigError):
    """A profile file that does not validate; names the file and the field."""


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
    cpu_match: CpuMatch | None = Field(None, description="what this machine's CPU must show for the profile to be "
                                                         "measurable here (arch, vendor, flags)")
    gpu_match: str | None = Field(None, description="text the CUDA device name must contain (torch-cuda profiles)")

    @property
    def device(self) -> DeviceSettings:
        """The device record the runtime side reads (deploy/device.py): what a bundle, a pack and a regress
        check carry of this profile."""
        return DeviceSettings(self.name, self.runtime, self.precision, self.threads, self.batch_size,
                              self.slide_batch_size, self.description, self.cpu_match, self.gpu_match)

    def matches_here(self) -> bool:
        """Whether this machine is the device and can measure it (``DeviceSettings.matches_here``); under
        PyTorch's runtime, torch itself must see the GPU."""
        return self.device.matches_here(_torch_gpu if TORCH in runtime(self.runtime).backends else None)


def _torch_gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


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
        error = config_error(err, "hardware profile", lambda loc: ".".join(map(str, loc)), HardwareProfile)
        raise ProfileError(f"{path}: {error}") from None


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
