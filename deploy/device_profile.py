"""`pathnas-infer profile PACK --out TIMINGS`: the device half of measuring a latency table. Torch-free.

The host (`pathnas-edge profile pack`) exports every distinct part of a supernet and a set of
probe subnets as ONNX files into a pack, with a manifest naming the device profile, the file
hashes and what each file is. Here, on the device (a Jetson, a hospital workstation: the
runtime install only), every file is opened in the profile's runtime and timed with the
tables' protocol (``timing.time_in_rounds``); the timings, with a record of this machine,
go back to the host, which assembles the table (`pathnas-edge profile assemble`).

A pack is data: its manifest is parsed and checked (types, paths inside the pack, SHA-256 of
every file) before anything is opened, and nothing in it is executed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from pathnas.errors import MissingFileError, UserError
from pathnas.io import read_json, sha256_file, write_json_atomic

from .child import run_module
from .device import DeviceSettings
from .machine import OtherLoad, busy_warning, cpu_model, gpu_name, speed_state, versions
from .manifest import _safe_relative  # the bundle's rule: a relative POSIX path inside the folder
from .runtimes import PACK_RUNTIMES, runtime
from .timing import TimingProtocol, time_in_rounds

PACK_SCHEMA = "pathnas-latency-pack/1"
TIMINGS_SCHEMA = "pathnas-latency-timings/1"
PACK_MANIFEST = "pack.json"  # the manifest at a pack's root
TIMINGS_FILE = "timings.json"  # the default name of the timings a device writes
ITEM_KINDS = ("part", "net")


class PackError(UserError):
    """A pack or a timings file that cannot be used; the message names the file and the field."""


def machine_record(device: DeviceSettings) -> dict:
    """This machine as a table states it: CPU, OS, GPU, the runtime's versions, the timing settings."""
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    found = runtime(device.runtime)
    gpu = gpu_name() if found.gpu else None
    return {
        **({"gpu": gpu} if gpu else {}),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "frequency_governor": governor.read_text().strip() if governor.exists() else "not readable",
        "runtime": device.runtime,
        "precision": device.precision,
        "threads": device.threads,
        "batch_size": device.batch_size,
        "versions": versions(found.distributions),  # the distributions whose versions decide its latency
        "speed_state": speed_state(gpu=found.gpu),
    }


def _shape(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(d, int) and d > 0 for d in value)


def read_pack(root: str | Path, check_hashes: bool = True) -> dict:
    """A pack's manifest, every field the device uses checked, and (``check_hashes``) every file's SHA-256."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"latency pack {root} does not exist (make one with `pathnas-edge profile pack`)")
    path = root / PACK_MANIFEST
    if not path.is_file():
        raise PackError(f"{root}: no {PACK_MANIFEST}; not a latency pack (make one with `pathnas-edge profile pack`)")
    manifest = read_json(path, "latency pack manifest")
    if manifest.get("schema") != PACK_SCHEMA:
        raise PackError(f"{path}: schema {manifest.get('schema')!r} is not {PACK_SCHEMA!r}")
    profile = manifest.get("profile")
    if not isinstance(profile, dict):
        raise PackError(f"{path}: field 'profile' is missing or not a mapping")
    if profile.get("runtime") not in PACK_RUNTIMES:
        raise PackError(f"{path}: profile.runtime {profile.get('runtime')!r}: a pack is timed in "
                        f"{', '.join(PACK_RUNTIMES)} (torch-cuda times PyTorch modules: use `profile measure` there)")
    pack_device(manifest, path)
    pack_timing(manifest, path)
    items = manifest.get("items")
    if not isinstance(items, list) or not items:
        raise PackError(f"{path}: field 'items' is missing or empty")
    names = set()
    for i, item in enumerate(items):
        where = f"{path}: items[{i}]"
        if not isinstance(item, dict):
            raise PackError(f"{where} is not a mapping")
        if not isinstance(item.get("name"), str) or item["name"] in names:
            raise PackError(f"{where}.name is missing, not text, or used twice")
        names.add(item["name"])
        if item.get("kind") not in ITEM_KINDS:
            raise PackError(f"{where}.kind {item.get('kind')!r}: allowed values are {', '.join(ITEM_KINDS)}")
        if not _safe_relative(item.get("file")) or not item["file"].endswith(".onnx"):
            raise PackError(f"{where}.file {item.get('file')!r}: a relative path to an .onnx file inside the pack")
        if not _shape(item.get("input_shape")):
            raise PackError(f"{where}.input_shape {item.get('input_shape')!r}: a list of positive integers")
        if not isinstance(item.get("sha256"), str):
            raise PackError(f"{where}.sha256 is missing")
        file = root / item["file"]
        if file.is_symlink() or not file.is_file():
            raise PackError(f"{where}: {file} is missing (a pack holds plain files only)")
        if check_hashes and sha256_file(file) != item["sha256"]:
            raise PackError(f"{where}: {file} does not match its SHA-256 in the manifest (copied incompletely?)")
    return manifest


def pack_device(manifest: dict, where) -> DeviceSettings:
    """The device a pack's manifest was made for."""
    return DeviceSettings.from_dict(manifest.get("profile"), str(where), PackError)


def pack_timing(manifest: dict, where) -> TimingProtocol:
    """How the host asked the pack to be timed (TimingProtocol's defaults for what it leaves out)."""
    try:
        return TimingProtocol.from_dict(manifest.get("timing"))
    except ValueError as err:
        raise PackError(f"{where}: {err}") from None


def manifest_digest(root: str | Path) -> str:
    """The SHA-256 of a pack's manifest: timings name the pack they were made from by it."""
    return hashlib.sha256((Path(root) / PACK_MANIFEST).read_bytes()).hexdigest()


def time_pack(root: str | Path, rounds: int | None = None, repeats: int | None = None, force: bool = False,
              advance=None, warn=None, shared_pool: bool = False) -> dict:
    """Open every file of the pack in its profile's runtime here and time them all with the tables'
    protocol, in this process. ``shared_pool``: ONNX Runtime's sessions on one shared thread pool
    (``runners.use_shared_thread_pool``), for a process that does nothing else: every later session
    of the process must then run on it. Returns the timings record (unsaved). ``warn(text)`` receives the device mismatch (default:
    printed to stderr); ``advance`` is called once per warm-up and per timing pass. A table's
    timings come from ``time_pack_in_processes``, which runs this once per round."""
    import numpy as np

    from .runners import use_shared_thread_pool

    root = Path(root)
    manifest = read_pack(root)
    device = pack_device(manifest, root / PACK_MANIFEST)
    protocol = pack_timing(manifest, root / PACK_MANIFEST).but(rounds, repeats)
    found = runtime(device.runtime)
    if shared_pool and found.shared_thread_pool:
        use_shared_thread_pool(device.threads)
    differs = device.mismatches()
    if differs:
        text = (f"this machine is not the device the pack was made for ({device.name}: "
                f"{device.description}): {'; '.join(differs)}. The timings say which machine they come from.")
        (warn or (lambda t: print(f"warning: {t}", file=sys.stderr)))(text)
    runners, fns, providers = {}, {}, set()
    other_load = OtherLoad()
    try:
        for item in manifest["items"]:
            runner = found.open(root / item["file"], device.threads, device.precision)
            runners[item["name"]] = runner
            providers.add(runner.provider)
            x = np.random.default_rng(0).standard_normal(runner.fixed_input_shape(device.batch_size),
                                                         dtype=np.float32)
            fns[item["name"]] = (lambda r=runner, x=x: r.run(x))
        results = time_in_rounds(fns, protocol, seed=int(manifest.get("seed", 0)), advance=advance)
    finally:
        for runner in runners.values():
            runner.close()
    batch = device.batch_size
    per_image = {name: {**r, "median_ms": r["median_ms"] / batch, "p90_ms": r["p90_ms"] / batch,
                        "rounds_median_ms": [round(m / batch, 6) for m in r["rounds_median_ms"]]}
                 for name, r in results.items()}
    return {
        "schema": TIMINGS_SCHEMA,
        "pack_sha256": manifest_digest(root),
        "profile": device.name,
        "units": f"milliseconds per image at batch size {batch}",
        "metadata": {**machine_record(device),
                     "execution_providers": sorted(providers), "timing_rounds": protocol.rounds,
                     "timing_repeats": protocol.repeats, "timing": protocol.to_dict(),
                     "device_mismatch": differs, "other_load_cores": other_load.cores()},
        "results": per_image,
    }


def time_pack_in_processes(root: str | Path, out: str | Path, rounds: int | None = None, repeats: int | None = None,
                           advance=None, warn=None) -> dict:
    """``time_pack`` with each round in a fresh process of its own, merged; the timings are written
    atomically to ``out`` and returned.

    A process has a speed of its own: six processes timing the same demo pack one after another on
    this project's 2-core VM gave end-to-end medians of 0.141-0.163 ms, and one gave 0.260 ms,
    every item alike (where the runtime's threads landed). A table timed in one process, or
    recalibrated in one, carries that process's speed into every later prediction. So each round
    runs in its own process, and each item's figure is taken across them by a median polish
    (``timing.median_polish``, items x processes): a slow process moves no item against another,
    and the level is that of the typical process. Under TensorRT all rounds run in one process: each
    process would build every file's engine anew (minutes per file on a Jetson)."""
    import numpy as np

    from .timing import median_polish

    # Absolute: the rounds run in child processes whose working folder is a temporary one.
    root, out = Path(root).resolve(), Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = read_pack(root)
    rounds = pack_timing(manifest, root / PACK_MANIFEST).but(rounds).rounds
    processes = rounds if runtime(manifest["profile"]["runtime"]).process_per_round else 1
    args = [str(root), "--rounds", str(rounds // processes), "--one-process", "--progress", "lines",
            *(["--repeats", str(repeats)] if repeats else [])]
    records = []
    with tempfile.TemporaryDirectory(prefix="pathnas-rounds-", dir=out.parent) as tmp:
        for k in range(processes):
            part = Path(tmp) / f"round-{k}.json"
            said = run_module("pathnas.deploy.toolkit", ["profile", *args, "--out", str(part)], tmp,
                              f"timing {root} failed (process {k + 1} of {processes})",
                              lambda line: advance() if advance and line.startswith('{"done"') else None)
            if k == 0:
                for line in said:
                    if line.startswith("warning: "):
                        (warn or (lambda t: print(f"warning: {t}", file=sys.stderr)))(line[len("warning: "):])
            records.append(read_timings(part, root))
    names = list(records[0]["results"])
    medians = np.log([[r["results"][n]["median_ms"] for r in records] for n in names])
    level, _ = median_polish(medians)
    results = {} if processes > 1 else records[0]["results"]
    for i, name in enumerate(names if processes > 1 else []):
        each = [r["results"][name] for r in records]
        results[name] = {"median_ms": float(np.exp(level[i])), "p90_ms": float(np.median([e["p90_ms"] for e in each])),
                         "rounds_median_ms": [round(e["median_ms"], 6) for e in each],
                         "runs": sum(e["runs"] for e in each), "inner": each[0]["inner"]}
    loads = [r["metadata"]["other_load_cores"] for r in records if r["metadata"].get("other_load_cores") is not None]
    metadata = {**records[0]["metadata"], "timing_rounds": rounds, "timing_processes": processes,
                "timing": {**records[0]["metadata"]["timing"], "rounds": rounds},
                "other_load_cores": max(loads) if loads else None}
    timings = {**records[0], "metadata": metadata, "results": results}
    write_json_atomic(out, timings)
    return timings


def read_timings(path: str | Path, pack_root: str | Path | None = None) -> dict:
    """A timings file, checked (and, given the pack, checked to come from that very pack)."""
    path = Path(path)
    timings = read_json(path, "latency timings", hint="time the pack on the device with `pathnas-infer profile`")
    if timings.get("schema") != TIMINGS_SCHEMA:
        raise PackError(f"{path}: schema {timings.get('schema')!r} is not {TIMINGS_SCHEMA!r}")
    for key, kind in (("pack_sha256", str), ("metadata", dict), ("results", dict)):
        if not isinstance(timings.get(key), kind):
            raise PackError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    for name, r in timings["results"].items():
        ok = isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) and r[k] > 0
                                         for k in ("median_ms", "p90_ms"))
        if not ok:
            raise PackError(f"{path}: results[{name!r}] needs positive median_ms and p90_ms")
    if pack_root is not None and timings["pack_sha256"] != manifest_digest(pack_root):
        raise PackError(f"{path}: these timings were made from another pack than {pack_root} "
                        f"(its manifest's SHA-256 differs)")
    return timings


# -- the command ----------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("pack", type=Path, help="a latency pack made by `pathnas-edge profile pack`")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where to write the timings (default: {TIMINGS_FILE} beside the pack)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default: the pack's)")
    parser.add_argument("--repeats", type=int, default=None, help="samples per item and round (default: the pack's)")
    parser.add_argument("--json", action="store_true", help="print a summary as JSON")
    parser.add_argument("--progress", choices=("bar", "lines"), default="bar",
                        help="lines: one JSON line per step on stdout, for a program that drives this one")
    parser.add_argument("--one-process", action="store_true",
                        help="time every round in this process (default: each round in a fresh process)")


def run(args) -> int:
    """Time the pack here and write the timings; prints where they are and what to run next."""
    if args.rounds is not None and args.rounds < 1 or args.repeats is not None and args.repeats < 3:
        raise UserError("--rounds must be >= 1 and --repeats >= 3")
    pack = Path(args.pack)
    out = args.out or pack.parent / TIMINGS_FILE
    manifest = read_pack(pack, check_hashes=False)  # time_pack checks them
    count = len(manifest["items"])
    protocol = pack_timing(manifest, pack / PACK_MANIFEST).but(args.rounds, args.repeats)
    rounds, repeats = protocol.rounds, protocol.repeats
    total = count + rounds * repeats if args.one_process else rounds * (count + repeats)
    state = {"done": 0}

    def advance() -> None:
        state["done"] += 1
        if args.progress == "lines":
            print(json.dumps({"done": state["done"], "total": total}), flush=True)
        elif not args.json and sys.stderr.isatty():
            print(f"\rtiming {count} items: {state['done']}/{total}", end="", file=sys.stderr, flush=True)

    try:
        if args.one_process:  # this process only times: its sessions share one pool
            timings = time_pack(pack, args.rounds, args.repeats, advance=advance, shared_pool=True)
            write_json_atomic(out, timings)
        else:
            timings = time_pack_in_processes(pack, out, args.rounds, args.repeats, advance=advance)
    finally:
        if not args.json and args.progress == "bar" and sys.stderr.isatty():
            print(file=sys.stderr)
    meta = timings["metadata"]
    busy = busy_warning(meta["other_load_cores"])
    if busy and args.progress == "bar":  # a program driving this one reports it itself
        print(f"warning: {busy}", file=sys.stderr)
    if args.json:
        print(json.dumps({"timings": str(out), "items": count, "profile": timings["profile"],
                          "providers": meta["execution_providers"], "device_mismatch": meta["device_mismatch"]}))
    else:
        print(f"timings of {count} items written to {out} ({', '.join(meta['execution_providers'])} on "
              f"{meta.get('gpu') or meta['cpu_model']}); on the host: "
              f"pathnas-edge profile assemble {pack} {out} --out TABLE")
    return 0
