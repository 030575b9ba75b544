"""The host half of measuring a table: every distinct part of a supernet and a set of probe subnets,
exported as ONNX into a self-describing pack (``pack.json`` with SHA-256 per file) that the device
times with the runtime install only (`pathnas-infer profile`).

Each part carries its key (module and exact input shape) and a digest of the module's full
configuration; parts another table of the same machine already timed under the same key and
digest are not exported again but carried in the manifest as ``reused_parts``, so a changed class
count or input size times only what changed. Each probe subnet lists the part keys it selects,
so the table is assembled from the pack and the timings alone.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pathnas.deploy.device import DeviceSettings
from pathnas.deploy.device_profile import PACK_MANIFEST, PACK_SCHEMA
from pathnas.deploy.runtimes import PACK_RUNTIMES
from pathnas.deploy.machine import versions
from pathnas.deploy.timing import TimingProtocol
from pathnas.errors import AlreadyExistsError, ConfigError
from pathnas.io import sha256_file, write_json_atomic

from .profiles import HardwareProfile
from .tables import config_digest

PART, NET = "part", "net"
# The reference model's item: a net of set "reference", timed in the same rounds and processes as the
# parts and probes (the device half needs no new kind); the table keeps its time as its anchor.
REFERENCE, REFERENCE_SET = "reference", "reference"
ITEMS_DIR = "items"  # the ONNX files inside a pack
# The toolchain's distributions whose versions decide the exported graphs.
TOOLCHAIN_DISTRIBUTIONS = ("torch", "onnx")


@dataclass
class Item:
    """One thing to time: a part (``key``) or a probe subnet (``arch``, in set fit/holdout/calibration)."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    build: Callable[[], object] = field(repr=False)
    key: str | None = None
    module_digest: str | None = None
    arch: str | None = None
    set: str | None = None
    parts: list[str] | None = None
    onnx: Callable[[], bytes] | None = field(default=None, repr=False)  # a ready ONNX file (the reference)

    def record(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "input_shape": list(self.input_shape)}
        out.update({k: v for k, v in (("key", self.key), ("module_digest", self.module_digest), ("arch", self.arch),
                                      ("set", self.set), ("parts", self.parts)) if v is not None})
        return out


def module_digest(module) -> str:
    """A digest of a module's full configuration (every layer and hyper-parameter, not its weights)."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:12]


def sample_archs(supernet, count: int, seed: int, exclude: set[str] = frozenset()) -> list:
    """``count`` distinct random paths (none of whose codes is in ``exclude``), the same for a seed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    archs, seen = [], set(exclude)
    for _ in range(count * 100):
        if len(archs) == count:
            return archs
        arch = supernet.sample(gen)
        if arch.code not in seen:
            seen.add(arch.code)
            archs.append(arch)
    raise ConfigError(f"the space has fewer than {count} distinct paths" + (" not yet measured" if exclude else ""))


def net_items(supernet, archs, set_of: Callable[[int], str]) -> list[Item]:
    parts = supernet.latency_parts()
    shape = tuple(supernet.example_input().shape)
    return [Item(f"net:{a.code}", NET, shape, lambda a=a: supernet.extract(a), arch=a.code, set=set_of(j),
                 parts=[p.key for p in supernet.parts_for(a, parts)]) for j, a in enumerate(archs)]


def reference_item() -> Item:
    """The reference model (profiling/reference.py) as an item: its file as it is, never exported."""
    from .reference import INPUT_SIZE, reference_model_bytes

    return Item(REFERENCE, NET, (1, 3, INPUT_SIZE, INPUT_SIZE), lambda: None, set=REFERENCE_SET,
                onnx=reference_model_bytes)


def plan_table(supernet, subnets: int, fit_subnets: int, seed: int = 0,
               reuse: dict[str, dict] | None = None) -> tuple[list[Item], dict[str, dict]]:
    """What a table needs timed: every distinct part not in ``reuse`` (key -> part entry of another
    table, reused where its module digest matches) and ``subnets`` random paths, the first
    ``fit_subnets`` fitting the overhead, the rest held out. Returns the items and the reused parts."""
    if subnets <= fit_subnets:
        raise ConfigError(f"subnets ({subnets}) must exceed fit_subnets ({fit_subnets}) to leave held-out paths")
    supernet = supernet.eval()
    unique = {p.key: p for p in supernet.latency_parts()}
    items, reused = [], {}
    for key, part in unique.items():
        digest = module_digest(part.build())
        if reuse and key in reuse and reuse[key].get("module_digest") == digest:
            reused[key] = reuse[key]
        else:
            items.append(Item(f"part:{key}", PART, part.input_shape, part.build, key=key, module_digest=digest))
    archs = sample_archs(supernet, subnets, seed)
    items += net_items(supernet, archs, lambda j: "fit" if j < fit_subnets else "holdout")
    return items + [reference_item()], reused


def export_part(module, input_shape: tuple[int, ...], path: Path) -> str:
    """``module`` as ONNX at this input shape (batch included), exported exactly as a shipped model is
    (``export_onnx``'s default exporter, export/artifacts.py): a table must time the graph that ships.
    The TorchScript exporter is ~10x faster, but its graph of a subnet is another one (a demo path: 181
    nodes against 62), and the shipped graph ran 0.84-0.86x its time, so a table made of it over-predicted
    the deployed model by ~15 % (issue 29). Returns the exporter used (the manifest records it)."""
    from pathnas.onnx import export_onnx

    return export_onnx(module.eval(), path, input_shape)["exporter"]


def profile_record(profile: HardwareProfile) -> dict:
    """What the device needs of its profile (the device has no YAML parser: this is plain JSON)."""
    return profile.device.to_dict(DeviceSettings.PACK_FIELDS)


def write_pack(supernet, profile: HardwareProfile, items: list[Item], out: str | Path, reused: dict | None = None,
               seed: int = 0, timing: TimingProtocol = TimingProtocol(), replace: bool = False,
               advance: Callable[[], None] | None = None) -> dict:
    """Export ``items`` into the pack folder ``out`` (built beside it and renamed into place, so a
    half-written pack never exists); returns the manifest."""
    import torch

    if profile.runtime not in PACK_RUNTIMES:
        raise ConfigError(f"device {profile.name} runs {profile.runtime}, which times PyTorch modules, not files: "
                          f"measure it on the device with `pathnas-edge profile measure`")
    out = Path(out)
    if out.exists() and not (replace and (out / PACK_MANIFEST).is_file()):
        raise AlreadyExistsError(f"{out} already exists; choose another --out (or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        records = []
        with torch.no_grad():
            for i, item in enumerate(items):
                rel = f"{ITEMS_DIR}/{i:04d}.onnx"
                if item.onnx is not None:
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    (staging / rel).write_bytes(item.onnx())
                    exporter = None
                else:
                    exporter = export_part(item.build(), (profile.batch_size, *item.input_shape[1:]), staging / rel)
                records.append({**item.record(), "file": rel, "sha256": sha256_file(staging / rel),
                                "exporter": exporter})
                if advance:
                    advance()
        config = supernet.config.model_dump(mode="json")
        manifest = {
            "schema": PACK_SCHEMA,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "profile": profile_record(profile),
            "space_config": config,
            "config_digest": config_digest(config),
            "seed": seed,
            "timing": timing.to_dict(),  # how the device times it (the device half reads it back)
            "toolchain": versions(TOOLCHAIN_DISTRIBUTIONS),
            "items": records,
            "reused_parts": reused or {},
        }
        write_json_atomic(staging / PACK_MANIFEST, manifest)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
