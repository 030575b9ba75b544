"""The machine a table was timed on, as the table states it (the device half writes the same record)."""
from __future__ import annotations

from pathnas.deploy.device_profile import machine_record

from .profiles import HardwareProfile

# The fields that must agree for parts timed in one session to be reused in another.
SAME_MACHINE_FIELDS = ("cpu_model", "gpu", "machine", "runtime", "precision", "threads", "batch_size", "versions")


def machine_metadata(profile: HardwareProfile) -> dict:
    record = machine_record(profile.device)
    if profile.runtime == "torch-cuda":
        import torch

        record.update(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, cuda=torch.version.cuda)
    return record


def same_machine(a: dict, b: dict) -> bool:
    """Whether two tables' metadata describe the same machine, runtime and settings."""
    return all(a.get(k) == b.get(k) for k in SAME_MACHINE_FIELDS)
