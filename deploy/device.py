"""A device, one record: how a model is run and timed there, and how to recognise it. Torch-free.

A hardware profile (profiling/profiles.py, read from YAML), a bundle manifest's ``profile``, a
latency pack's ``profile`` and the settings a regress check times with are all a ``DeviceSettings``:
read by one constructor (``from_dict``, every field checked, the error naming the field), written by
one (``to_dict``), and asked one question, ``matches_here()``: is this machine that device?
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, fields
from typing import Callable

from pathnas.errors import ConfigError

from .machine import cpu_flags, cpu_info, gpu_name
from .runtimes import ENGINE_MAX_BATCH, PRECISIONS, runtime


@dataclass(frozen=True)
class CpuMatch:
    """What this machine's CPU must show for the profile to be measurable here."""

    arch: str | None = None
    vendor: str | None = None
    flags: tuple[str, ...] = ()

    def mismatches(self) -> list[str]:
        out = []
        if self.arch and self.arch != platform.machine():
            out.append(f"CPU architecture {platform.machine()}, the profile wants {self.arch}")
        if self.vendor and self.vendor != cpu_info().get("vendor_id"):
            out.append(f"CPU vendor {cpu_info().get('vendor_id')}, the profile wants {self.vendor}")
        missing = sorted(set(self.flags) - cpu_flags())
        if missing:
            out.append(f"the CPU lacks {', '.join(missing)}")
        return out


@dataclass(frozen=True)
class DeviceSettings:
    name: str
    runtime: str  # a runtime of the registry (runtimes.py)
    precision: str
    threads: int
    batch_size: int = 1  # the batch latency is measured and regress-checked at
    slide_batch_size: int | None = None  # tiles per inference when pathnas-infer runs slides (None: batch_size)
    description: str = ""
    cpu_match: CpuMatch | None = None  # None: a CPU runtime's profile describes a machine that is not this one
    gpu_match: str | None = None  # text the GPU's name must contain (case-insensitive)

    def __post_init__(self):
        runtime(self.runtime)  # an unknown runtime is named with the known ones
        if self.precision not in PRECISIONS:
            raise ConfigError(f"device {self.name}: precision {self.precision!r}: allowed values are "
                              f"{', '.join(PRECISIONS)}")

    # The fields each document records (their formats predate this record and stay readable).
    MANIFEST_FIELDS = ("name", "runtime", "precision", "threads", "batch_size", "slide_batch_size", "description")
    PACK_FIELDS = ("name", "description", "runtime", "precision", "threads", "batch_size", "cpu_match", "gpu_match")
    RUN_FIELDS = ("name", "runtime", "precision", "threads", "batch_size")  # a regress check's timing process

    @property
    def tiles_per_batch(self) -> int:
        return self.slide_batch_size or self.batch_size

    @classmethod
    def from_dict(cls, data, where: str = "device", error: type[Exception] = ConfigError) -> "DeviceSettings":
        """The record from a manifest's, a pack's or a request's mapping (or a HardwareProfile's dump), every
        field it has checked; ``error`` (naming ``where`` and the field) otherwise. Other keys are ignored."""
        if not isinstance(data, dict):
            raise error(f"{where}: the device profile is not a mapping")
        kinds = {"name": str, "runtime": str, "precision": str, "threads": int, "batch_size": int,
                 "slide_batch_size": int, "description": str, "gpu_match": str}
        values = {}
        for key, kind in kinds.items():
            value = data.get(key)
            if value is None:  # left out, or null: the default (the first four have none)
                if key in ("name", "runtime", "precision", "threads"):
                    raise error(f"{where}: profile.{key} is missing")
                continue
            if isinstance(value, bool) or not isinstance(value, kind):
                raise error(f"{where}: profile.{key} {value!r} is not {'an' if kind is int else 'a'} {kind.__name__}")
            values[key] = value
        for key in ("threads", "batch_size"):
            if key in values and values[key] < 1:
                raise error(f"{where}: profile.{key} {values[key]} must be at least 1")
        slide = values.get("slide_batch_size")
        if slide is not None and not 1 <= slide <= ENGINE_MAX_BATCH:
            raise error(f"{where}: profile.slide_batch_size {slide} is not an integer from 1 to {ENGINE_MAX_BATCH}")
        match = data.get("cpu_match")
        if match is not None:
            ok = isinstance(match, dict) and set(match) <= {"arch", "vendor", "flags"} \
                and all(isinstance(match.get(k), (str, type(None))) for k in ("arch", "vendor")) \
                and isinstance(match.get("flags", []), list) and all(isinstance(f, str) for f in match.get("flags", []))
            if not ok:
                raise error(f"{where}: profile.cpu_match {match!r}: a mapping of arch, vendor (text) and flags (a list)")
            values["cpu_match"] = CpuMatch(match.get("arch"), match.get("vendor"), tuple(match.get("flags") or ()))
        try:
            return cls(**values)
        except ConfigError as err:
            raise error(f"{where}: {err}") from None

    def to_dict(self, keys: tuple[str, ...] | None = None) -> dict:
        """The record as JSON, with ``keys`` only (default: all)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if keys is None or f.name in keys}
        if "cpu_match" in out and self.cpu_match is not None:
            out["cpu_match"] = {**asdict(self.cpu_match), "flags": list(self.cpu_match.flags)}
        return out

    def mismatches(self, gpu: Callable[[], str | None] = gpu_name) -> list[str]:
        """How this machine differs from the device, as far as the record can tell (empty: it is the device).
        ``gpu``: the GPU's name here (default: nvidia-smi's, or a Jetson's module)."""
        out = self.cpu_match.mismatches() if self.cpu_match else []
        if runtime(self.runtime).gpu or self.gpu_match:
            name = gpu()
            if name is None:
                wanted = f"one named *{self.gpu_match}*" if self.gpu_match else "one"
                out.append(f"no NVIDIA GPU found, the profile wants {wanted}")
            elif self.gpu_match and self.gpu_match.lower() not in name.lower():
                out.append(f"GPU {name}, the profile wants one named *{self.gpu_match}*")
        return out

    def matches_here(self, gpu: Callable[[], str | None] | None = None) -> bool:
        """Whether this machine is the device and can measure it: its runtime is installed, the GPU (for a GPU
        runtime) and the CPU show what the record asks for; a CPU runtime's record without ``cpu_match``
        describes another machine. ``gpu``: the GPU's name here (default: ``mismatches``'; a profile of
        PyTorch's runtime passes torch's, which must see the GPU itself)."""
        found = runtime(self.runtime)
        if not found.installed():
            return False
        if not found.gpu and self.cpu_match is None:
            return False
        return not self.mismatches(gpu or gpu_name)
