"""Per-device latency tables: measuring them, their file format, and where they are found.

A table holds, for one hardware profile and one supernet configuration, the median latency
of every distinct part (OFA-style: keyed by module and exact input shape), the overhead
model fitted on whole subnets measured end to end, and the predictor's accuracy on held-out
subnets. Files are schema-versioned JSON; every latency key carries its unit.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from pathnas.deploy.machine import cpu_model, versions
from pathnas.deploy.runners import open_profile_runner
from pathnas.deploy.timing import time_callable
from pathnas.errors import ConfigError, InvalidFileError, MissingFileError, UserError
from pathnas.io import read_json, write_json_atomic

from .profiles import HardwareProfile

log = logging.getLogger("pathnas.profiling")

SCHEMA = "pathnas-latency-table/1"
TABLES_ENV = "PATHNAS_LATENCY_TABLES"


class NoLatencyTableError(UserError):
    """The device has no measured table for this supernet configuration."""


def config_digest(space_config: dict) -> str:
    canonical = json.dumps(space_config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def table_filename(space_config: dict) -> str:
    return f"{space_config['space']}-{config_digest(space_config)}.json"


def packaged_tables_dir(profile: HardwareProfile) -> Path:
    return Path(str(resources.files("pathnas.hardware_profiles"))) / "tables" / profile.name


def find_table(profile: HardwareProfile, space_config: dict, table_path: str | Path | None = None) -> Path | None:
    """An explicit path, else $PATHNAS_LATENCY_TABLES/<profile>/, else the tables shipped with the package."""
    if table_path is not None:
        path = Path(table_path)
        if not path.is_file():
            raise MissingFileError(f"latency table {path} does not exist")
        return path
    name = table_filename(space_config)
    folders = [Path(os.environ[TABLES_ENV]) / profile.name] if os.environ.get(TABLES_ENV) else []
    folders.append(packaged_tables_dir(profile))
    return next((f / name for f in folders if (f / name).is_file()), None)


def load_table(path: str | Path) -> dict:
    path = Path(path)
    table = read_json(path, "latency table")
    if table.get("schema") != SCHEMA:
        raise InvalidFileError(f"{path}: not a latency table of schema {SCHEMA} (found {table.get('schema')!r})")
    for key in ("profile", "space_config", "parts", "overhead", "metadata"):
        if key not in table:
            raise InvalidFileError(f"{path}: latency table lacks {key!r}")
    return table


def _space_args(space_config: dict) -> list[str]:
    """The --space and knob options that rebuild this configuration (defaults left out)."""
    from pathnas.spaces import space_config as default_config

    defaults = default_config(space_config["space"]).model_dump(mode="json")
    args = [f"--space {space_config['space']}"]
    for key, value in space_config.items():
        if key == "space" or defaults.get(key) == value:
            continue
        if key == "input_size":
            args.append(f"--input-size {value}")
        elif key == "width_mult":
            args.append(f"--width-mult {value}")
        else:
            args.append(f"--option '{key}={json.dumps(value, separators=(',', ':'))}'")
    return args


def profile_command(profile: HardwareProfile, space_config: dict, out: str | Path) -> str:
    """The command a person runs on the device to measure the table this configuration needs."""
    return " ".join([f"pathnas-edge profile measure --device {profile.name}", *_space_args(space_config),
                     f"--out {out}"])


def calibrate_command(profile: HardwareProfile, space_config: dict, table: str | Path | None, out: str | Path) -> str:
    """The command that brings a table back in line with the device as it is now."""
    return " ".join([f"pathnas-edge profile calibrate --device {profile.name}", *_space_args(space_config),
                     *([f"--table {table}"] if table else []), f"--out {out}"])


def missing_table_error(profile: HardwareProfile, space_config: dict) -> NoLatencyTableError:
    name = table_filename(space_config)
    target = f"$PATHNAS_LATENCY_TABLES/{profile.name}/{name}"
    return NoLatencyTableError(
        f"device {profile.name} has no measured latency table for this {space_config['space']} configuration. "
        f"On the device ({profile.description}), run:\n  {profile_command(profile, space_config, name)}\n"
        f"and put the file it writes at {target} (or at {packaged_tables_dir(profile) / name} to ship it), "
        f"or pass --latency-table FILE. --latency-source roofline gives a labelled estimate instead."
    )


# The distributions whose versions decide a runtime's latency.
RUNTIME_DISTRIBUTIONS = {"onnxruntime-cpu": ("onnxruntime",), "openvino-cpu": ("openvino",),
                         "tensorrt": ("onnxruntime", "tensorrt"), "torch-cuda": ()}


def machine_metadata(profile: HardwareProfile) -> dict:
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    gpu = {}
    if profile.runtime == "torch-cuda":
        import torch

        gpu = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cuda": torch.version.cuda}
    return {**gpu,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "frequency_governor": governor.read_text().strip() if governor.exists() else "not readable",
        "runtime": profile.runtime,
        "precision": profile.precision,
        "threads": profile.threads,
        "batch_size": profile.batch_size,
        "versions": versions(("torch", "onnx", *RUNTIME_DISTRIBUTIONS[profile.runtime])),
    }


def accuracy_figures(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> dict:
    """nn-Meter's figures: RMSE, RMSPE and the share of predictions within ±5/10/15 %."""
    err = predicted_ms - measured_ms
    rel = np.abs(err) / measured_ms
    return {
        "subnets": int(measured_ms.size),
        "rmse_ms": float(np.sqrt(np.mean(err**2))),
        "rmspe_pct": float(100 * np.sqrt(np.mean((err / measured_ms) ** 2))),
        "mape_pct": float(100 * rel.mean()),
        "within_5_pct": float(100 * np.mean(rel <= 0.05)),
        "within_10_pct": float(100 * np.mean(rel <= 0.10)),
        "within_15_pct": float(100 * np.mean(rel <= 0.15)),
    }


def fit_overhead(parts_sum_ms: np.ndarray, measured_ms: np.ndarray) -> dict:
    """measured ≈ scale × (sum of parts) + offset, by least squares.

    The offset is the work between parts (concatenations, the runtime's per-call cost paid
    once instead of once per part); the scale absorbs what fusing the parts in one graph
    saves. With fewer than 3 subnets only the offset is fitted.
    """
    if parts_sum_ms.size >= 3 and np.ptp(parts_sum_ms) > 0:
        scale, offset = np.polyfit(parts_sum_ms, measured_ms, 1)
        return {"model": "linear", "scale": float(scale), "offset_ms": float(offset)}
    return {"model": "offset", "scale": 1.0, "offset_ms": float(np.mean(measured_ms - parts_sum_ms))}


def _export_for(profile: HardwareProfile, module, input_shape, path: Path) -> Path:
    """``module`` as ONNX at the profile's batch size (every file runtime here reads ONNX)."""
    from pathnas.onnx import export_onnx

    # Blocks and subnets are plain convolutions/attention: the TorchScript exporter is
    # ~100x faster than dynamo here and gives the same graph.
    export_onnx(module.eval(), path, (profile.batch_size, *input_shape[1:]), exporters=("legacy", "dynamo"))
    return path


# Where each runtime that times PyTorch modules runs them (tests run the same code on "cpu").
TORCH_DEVICES = {"torch-cuda": "cuda"}
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16"}


class _Timed:
    """One thing to time (a part, a subnet), timed in rounds; its result is the fastest round's."""

    provider: str
    repeats = 15

    def __init__(self):
        self.rounds: list = []

    def time_once(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def result(self, batch_size: int) -> dict:
        # The fastest round's figures: interference (other load, a slower period of the VM)
        # only ever adds time, so the minimum over rounds is the least disturbed estimate.
        best = min(self.rounds, key=lambda r: r.median_ms)
        return {"median_ms": best.median_ms / batch_size, "p90_ms": best.p90_ms / batch_size,
                "rounds_median_ms": [round(r.median_ms / batch_size, 6) for r in self.rounds],
                "runs": best.runs, "inner": best.inner}


class FileItem(_Timed):
    """A model file (ONNX, OpenVINO IR, TensorRT engine) opened in the profile's runtime."""

    def __init__(self, path: Path, profile: HardwareProfile):
        super().__init__()
        self.runner = open_profile_runner(path, profile.runtime, profile.threads, profile.precision)
        self.provider = self.runner.provider
        shape = self.runner.fixed_input_shape(profile.batch_size)
        self.x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def time_once(self) -> None:
        self.rounds.append(time_callable(lambda: self.runner.run(self.x), repeats=self.repeats))

    def close(self) -> None:
        self.runner.close()


class TorchItem(_Timed):
    """A PyTorch module on a torch device, in the profile's precision.

    On CUDA the module's forward pass is captured once as a CUDA graph and the graph's replay is
    timed, with ``torch.cuda.synchronize`` before every clock read and the same warm-up by count
    and time as every other runtime. Eager calls at batch 1 time the host instead of the GPU:
    benchmarks/torch_cuda_timing.py on an H100 (default ShuffleNet, 224 px, FP16) measured eager
    round medians of 8.9 to 12.3 ms, each call costing as much host CPU time as wall time, for a
    graph replay of 0.83 to 0.85 ms. A module that cannot be captured is timed eagerly, and its
    provider says so.
    """

    def __init__(self, module, input_shape: tuple[int, ...], device: str, precision: str = "fp32"):
        import torch

        super().__init__()
        if precision not in TORCH_DTYPES:
            raise ConfigError(f"precision {precision!r}: PyTorch timing supports {', '.join(TORCH_DTYPES)}")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ConfigError("runtime torch-cuda needs a CUDA GPU; torch finds none on this machine")
        dtype = getattr(torch, TORCH_DTYPES[precision])
        # A copy: moving and casting must never touch a module the caller keeps (a supernet's part).
        self.module = copy.deepcopy(module).eval().to(self.device, dtype)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(input_shape, generator=generator).to(self.device, dtype)
        self.sync = torch.cuda.synchronize if cuda else None
        self.graph = self._capture() if cuda else None
        if cuda:
            mode = "CUDA graph" if self.graph is not None else "CUDA, eager: graph capture failed"
            where = f"{torch.cuda.get_device_name(self.device)} ({mode})"
        else:
            where = self.device.type.upper()
        self.provider = f"torch {torch.__version__} {where} {precision}"

    def _capture(self):
        import torch

        try:
            with torch.inference_mode():
                # Warm up on a side stream first (cuDNN chooses its kernels), as CUDA graph capture requires.
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self.module(self.x)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._out = self.module(self.x)
            return graph
        except RuntimeError as err:  # an operation that cannot be captured (a host sync, a dynamic shape)
            log.info("CUDA graph capture failed (%s): timing eager calls", err)
            return None

    def _call(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.module(self.x)

    def time_once(self) -> None:
        import torch

        with torch.inference_mode():
            self.rounds.append(time_callable(self._call, repeats=self.repeats, sync=self.sync))

    def close(self) -> None:
        self.module = self.x = self.graph = self._out = None


def open_item(profile: HardwareProfile, module, input_shape: tuple[int, ...], folder: Path, name: str) -> _Timed:
    """``module`` ready to time in the profile's runtime: exported to ONNX and opened in the
    runtime, or, for runtimes that time PyTorch itself, placed on the device."""
    if profile.runtime in TORCH_DEVICES:
        return TorchItem(module, (profile.batch_size, *input_shape[1:]), TORCH_DEVICES[profile.runtime],
                         profile.precision)
    return FileItem(_export_for(profile, module, input_shape, folder / f"{name}.onnx"), profile)


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


def time_modules(profile: HardwareProfile, modules: list[tuple[str, Callable[[], object], tuple[int, ...]]],
                 rounds: int, seed: int, advance: Callable[[], None] | None = None) -> tuple[dict[str, dict], list[str]]:
    """Time PyTorch modules in the profile's runtime; returns each one's figures (per image, the
    fastest round's) by name, and the providers that ran them.

    ``modules`` lists (name, build, input_shape); every module is built, exported where the runtime
    reads files, and opened first; then all are timed ``rounds`` times, in a new shuffled order
    each round, so that a slow spell of the machine touches all of them alike instead of biasing
    whichever was being timed. ``advance`` is called once per module opened and per timing.
    """
    import random

    import torch

    items: dict[str, _Timed] = {}
    with tempfile.TemporaryDirectory(prefix="pathnas-profile-") as tmp, torch.no_grad():
        try:
            for i, (name, build, input_shape) in enumerate(modules):
                items[name] = open_item(profile, build(), input_shape, Path(tmp), f"item{i}")
                if advance:
                    advance()
            order, shuffler = list(items), random.Random(seed)
            for _ in range(rounds):
                shuffler.shuffle(order)
                for name in order:
                    items[name].time_once()
                    if advance:
                        advance()
        finally:
            for item in items.values():
                item.close()
    return ({name: item.result(profile.batch_size) for name, item in items.items()},
            sorted({item.provider for item in items.values()}))


def measure_table(
    supernet,
    profile: HardwareProfile,
    subnets: int = 40,
    fit_subnets: int = 10,
    rounds: int = 3,
    seed: int = 0,
    progress=None,
) -> dict:
    """Measure every part and ``subnets`` random paths end to end on this machine.

    Everything is exported and opened first, then timed in ``rounds`` interleaved passes in
    shuffled order (``time_modules``). The first ``fit_subnets`` paths fit the overhead model;
    the rest are held out and give the accuracy figures. Returns the table (unsaved).
    """
    if subnets <= fit_subnets:
        raise ConfigError(f"subnets ({subnets}) must exceed fit_subnets ({fit_subnets}) to leave held-out paths")
    if rounds < 1:
        raise ConfigError(f"rounds {rounds}: at least 1")
    supernet = supernet.eval()
    parts = supernet.latency_parts()
    unique = {p.key: p for p in parts}
    archs = sample_archs(supernet, subnets, seed)
    total = len(unique) + len(archs)
    task = progress.add_task(f"profiling {profile.name}", total=total * (rounds + 1)) if progress else None
    input_shape = tuple(supernet.example_input().shape)
    modules = [(key, part.build, part.input_shape) for key, part in unique.items()]
    modules += [(f"net:{arch.code}", lambda a=arch: supernet.extract(a), input_shape) for arch in archs]
    results, providers = time_modules(profile, modules, rounds, seed,
                                      (lambda: progress.advance(task)) if progress else None)
    measured_parts = {key: {"input_shape": list(unique[key].input_shape), **results[key]} for key in unique}
    end_to_end = []
    for j, arch in enumerate(archs):
        r = results[f"net:{arch.code}"]
        end_to_end.append({
            "arch": arch.code, "measured_median_ms": r["median_ms"], "measured_p90_ms": r["p90_ms"],
            "parts_sum_ms": sum(measured_parts[p.key]["median_ms"] for p in supernet.parts_for(arch, parts)),
            "set": "fit" if j < fit_subnets else "holdout",
        })
    fit = [r for r in end_to_end if r["set"] == "fit"]
    overhead = fit_overhead(np.array([r["parts_sum_ms"] for r in fit]), np.array([r["measured_median_ms"] for r in fit]))
    overhead["fit_subnets"] = len(fit)
    for r in end_to_end:
        r["predicted_ms"] = overhead["scale"] * r["parts_sum_ms"] + overhead["offset_ms"]
    held = [r for r in end_to_end if r["set"] == "holdout"]
    return {
        "schema": SCHEMA,
        "profile": profile.name,
        "space": supernet.config.space,
        "space_config": supernet.config.model_dump(mode="json"),
        "config_digest": config_digest(supernet.config.model_dump(mode="json")),
        "units": f"milliseconds per image at batch size {profile.batch_size}",
        "metadata": {**machine_metadata(profile), "execution_providers": providers, "timing_rounds": rounds},
        "parts": measured_parts,
        "overhead": overhead,
        "end_to_end": end_to_end,
        "accuracy": accuracy_figures(np.array([r["measured_median_ms"] for r in held]),
                                     np.array([r["predicted_ms"] for r in held])),
    }


def save_table(table: dict, path: str | Path) -> Path:
    write_json_atomic(path, table)
    return Path(path)


def measure_model_latency(model_or_path, profile: HardwareProfile, input_shape: tuple[int, ...] | None = None,
                          rounds: int = 3) -> dict:
    """Latency on this machine, in the profile's runtime, of a PyTorch model (exported to ONNX at
    ``input_shape``, batch set to the profile's; or run as it is under torch-cuda) or of a model
    file (.onnx, .xml, .engine) as it is.

    Returns the fastest of ``rounds`` timing rounds: median_ms and p90_ms per image, the medians
    of all rounds, and the provider that ran it.
    """
    if not profile.runs_here():
        raise ConfigError(f"device {profile.name} ({profile.description}) cannot be measured on this machine")
    with tempfile.TemporaryDirectory(prefix="pathnas-measure-") as tmp:
        if isinstance(model_or_path, (str, Path)):
            if profile.runtime in TORCH_DEVICES:
                raise ConfigError(f"runtime {profile.runtime} times PyTorch modules, not model files like "
                                  f"{model_or_path}")
            item: _Timed = FileItem(Path(model_or_path), profile)
        else:
            import torch

            if input_shape is None:
                raise ConfigError("input_shape is needed to time a PyTorch model")
            with torch.no_grad():
                item = open_item(profile, model_or_path, input_shape, Path(tmp), "model")
        try:
            for _ in range(rounds):
                item.time_once()
        finally:
            item.close()
    return {**item.result(profile.batch_size), "provider": item.provider}
