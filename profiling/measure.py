"""A table from a pack and its timings (``assemble_table``), and the one way to measure one:
pack -> time -> assemble (``measure_table``). The timing is always the device half's code
(`pathnas-infer profile`): here in child processes, or on a device without the toolchain, by hand
or over SSH (``remote``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from pathnas.deploy.device_profile import PACK_MANIFEST, read_pack, read_timings, time_pack_in_processes
from pathnas.deploy.machine import versions
from pathnas.deploy.timing import TimingProtocol
from pathnas.errors import ConfigError
from pathnas.io import read_json

from .fitting import accuracy_figures, fit_overhead, spread_pct
from .machine import machine_metadata, same_machine
from .pack import NET, PART, REFERENCE_SET, TOOLCHAIN_DISTRIBUTIONS, Item, plan_table, profile_record, write_pack
from .profiles import HardwareProfile
from .tables import SCHEMA, config_digest, tables_of
from .timed import TORCH_DEVICES, time_torch_modules

# Probe subnets when every part but a few is reused: the overhead fit (two numbers) is redone on
# the first four and checked on the other four. The probes are most of an incremental measure's
# time (with 12 it took 24-30 % of a full measure, with 8 18-20 %:
# benchmarks/latency_split.py --incremental).
INCREMENTAL_SUBNETS, INCREMENTAL_FIT = 8, 4


def _progress(progress, description: str, total: int) -> Callable[[], None] | None:
    if progress is None:
        return None
    task = progress.add_task(description, total=total)
    return lambda: progress.advance(task)


def assemble_table(manifest: dict, timings: dict) -> dict:
    """The table of a pack's timed parts (and the parts it reuses), its overhead fitted on the
    ``fit`` probes and its accuracy on the held-out ones. Pure data: no model is built."""
    results = timings["results"]
    missing = [item["name"] for item in manifest["items"] if item["name"] not in results]
    if missing:
        raise ConfigError(f"the timings lack {len(missing)} of the pack's items (first: {missing[0]}); "
                          f"time the whole pack again")
    profile = manifest["profile"]
    parts = {key: dict(entry) for key, entry in manifest.get("reused_parts", {}).items()}
    for item in manifest["items"]:
        if item["kind"] == PART:
            r = results[item["name"]]
            parts[item["key"]] = {"input_shape": item["input_shape"], "module_digest": item.get("module_digest"),
                                  **{k: r[k] for k in ("median_ms", "p90_ms", "rounds_median_ms", "runs", "inner")
                                     if k in r}, "spread_pct": spread_pct(r.get("rounds_median_ms"))}
    end_to_end = []
    for item in manifest["items"]:
        if item["kind"] != NET or item.get("set") not in ("fit", "holdout"):
            continue
        lacking = [k for k in item["parts"] if k not in parts]
        if lacking:
            raise ConfigError(f"pack item {item['name']} selects part {lacking[0]}, which the pack neither times "
                              f"nor reuses")
        r = results[item["name"]]
        end_to_end.append({"arch": item["arch"], "measured_median_ms": r["median_ms"], "measured_p90_ms": r["p90_ms"],
                           "spread_pct": spread_pct(r.get("rounds_median_ms")),
                           "parts_sum_ms": sum(parts[k]["median_ms"] for k in item["parts"]), "set": item["set"]})
    fit = [r for r in end_to_end if r["set"] == "fit"]
    held = [r for r in end_to_end if r["set"] == "holdout"]
    if not fit or not held:
        raise ConfigError("a pack for a table needs probe subnets in both sets, fit and holdout")
    overhead = fit_overhead(np.array([r["parts_sum_ms"] for r in fit]), np.array([r["measured_median_ms"] for r in fit]))
    overhead["fit_subnets"] = len(fit)
    for r in end_to_end:
        r["predicted_ms"] = overhead["scale"] * r["parts_sum_ms"] + overhead["offset_ms"]
    config = manifest["space_config"]
    timed = sum(1 for i in manifest["items"] if i["kind"] == PART)
    accuracy = accuracy_figures(np.array([r["measured_median_ms"] for r in held]),
                                np.array([r["predicted_ms"] for r in held]))
    return {
        "schema": SCHEMA,
        "profile": profile["name"],
        "space": config["space"],
        "space_config": config,
        "config_digest": manifest["config_digest"],
        "units": f"milliseconds per image at batch size {profile['batch_size']}",
        "metadata": {**timings["metadata"], "toolchain_versions": manifest.get("toolchain", {}),
                     "parts_timed": timed, "parts_reused": len(manifest.get("reused_parts", {}))},
        "parts": parts,
        "overhead": overhead,
        "end_to_end": end_to_end,
        "accuracy": accuracy,
        **({"anchor": anchor_record(manifest, results, accuracy)} if _reference(manifest) else {}),
    }


def _reference(manifest: dict) -> dict | None:
    return next((i for i in manifest["items"] if i.get("set") == REFERENCE_SET), None)


def anchor_record(manifest: dict, results: dict, accuracy: dict) -> dict:
    """What a table promises on a later day and how to hold it to that: the reference model's time,
    timed in the same rounds and processes as the parts, with its spread; ``tolerance_pct`` is how far a
    later timing of the reference (or of paths, against their prediction) may be off before the machine
    reads as another one: the larger of the held-out paths' 90th-percentile error, three spreads of the
    reference, and 10 %."""
    item = _reference(manifest)
    r = results[item["name"]]
    spread = spread_pct(r.get("rounds_median_ms"))
    return {"reference_sha256": item["sha256"], "reference_ms": r["median_ms"],
            "reference_rounds_ms": r.get("rounds_median_ms"), "reference_spread_pct": spread,
            "tolerance_pct": round(max(10.0, accuracy.get("p90_error_pct", 0.0), 3 * (spread or 0.0)), 2)}


def assemble_files(pack: str | Path, timings: str | Path) -> dict:
    """``assemble_table`` of a pack folder and the timings file a device wrote for it."""
    manifest = read_pack(pack, check_hashes=False)
    return assemble_table(manifest, read_timings(timings, pack))


def time_items(profile: HardwareProfile, supernet, items: list[Item], rounds: int | None = None,
               repeats: int | None = None, seed: int = 0, reused: dict | None = None, progress=None, remote=None) -> tuple[dict, dict]:
    """Time ``items`` in the profile's runtime (here, or on ``remote``, a ``remote.Remote``) with the
    tables' protocol: through a pack and the device half's code for file runtimes, as PyTorch modules
    under torch-cuda. ``rounds`` and ``repeats``: None for the tables' protocol's (``TimingProtocol``).
    Returns (manifest, timings), the inputs of ``assemble_table``."""
    protocol = TimingProtocol().but(rounds, repeats)
    rounds = protocol.rounds
    config = supernet.config.model_dump(mode="json")
    if profile.runtime in TORCH_DEVICES:
        if remote is not None:
            raise ConfigError(f"runtime {profile.runtime} times PyTorch modules on the device: run `pathnas-edge "
                              f"profile measure` there (--remote needs a runtime that times files)")
        items = [i for i in items if i.onnx is None]  # ONNX files (the reference) are for file runtimes
        advance = _progress(progress, f"timing {profile.name}", len(items) + rounds * protocol.repeats)
        results, providers = time_torch_modules(profile, [(i.name, i.build, i.input_shape) for i in items],
                                                protocol, seed, advance)
        manifest = {"profile": profile_record(profile), "space_config": config, "config_digest": config_digest(config),
                    "toolchain": versions(TOOLCHAIN_DISTRIBUTIONS), "items": [i.record() for i in items],
                    "reused_parts": reused or {}}
        metadata = {**machine_metadata(profile), "execution_providers": providers, "timing_rounds": rounds,
                    "timing_repeats": protocol.repeats, "timing": protocol.to_dict()}
        return manifest, {"results": results, "metadata": metadata}
    with tempfile.TemporaryDirectory(prefix="pathnas-pack-") as tmp:
        pack = Path(tmp) / "pack"
        manifest = write_pack(supernet, profile, items, pack, reused, seed, protocol,
                              advance=_progress(progress, f"exporting for {profile.name}", len(items)))
        if remote is not None:
            timings = remote.time_pack(pack, Path(tmp) / "timings.json")
        else:
            # as a device does: `pathnas-infer profile`, each round in a fresh process of its own
            timings = time_pack_in_processes(pack, Path(tmp) / "timings.json", advance=_progress(
                progress, f"timing {profile.name}", rounds * (len(items) + protocol.repeats)))
        return read_json(pack / PACK_MANIFEST, "latency pack manifest"), timings


def reusable_parts(profile: HardwareProfile, metadata: dict | None = None) -> dict[str, dict]:
    """Parts of this device's tables (user's and shipped) timed on this same machine (``metadata``:
    default, this machine's record now), newest table first; each says where it came from."""
    here = metadata or machine_metadata(profile)
    out: dict[str, dict] = {}
    found = [(p, t) for p, t in tables_of(profile) if same_machine(t["metadata"], here)]
    for path, table in sorted(found, key=lambda pt: pt[1]["metadata"].get("date", ""), reverse=True):
        for key, entry in table["parts"].items():
            if entry.get("module_digest") and key not in out:
                out[key] = {**entry, "reused_from": entry.get("reused_from") or str(path),
                            "timed_at": entry.get("timed_at") or table["metadata"].get("date")}
    return out


def measure_table(
    supernet,
    profile: HardwareProfile,
    subnets: int = 40,
    fit_subnets: int = 10,
    rounds: int | None = None,
    seed: int = 0,
    progress=None,
    reuse: dict[str, dict] | None = None,
    repeats: int | None = None,
    remote=None,
) -> dict:
    """Measure every part not in ``reuse`` and ``subnets`` random paths end to end, here (or on
    ``remote``): pack -> time -> assemble. The first ``fit_subnets`` paths fit the overhead model;
    the rest are held out and give the accuracy figures. Returns the table (unsaved)."""
    items, reused = plan_table(supernet, subnets, fit_subnets, seed, reuse)
    manifest, timings = time_items(profile, supernet, items, rounds, repeats, seed, reused, progress, remote)
    return assemble_table(manifest, timings)
