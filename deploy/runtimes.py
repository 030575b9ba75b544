"""The runtimes, in one registry: what each one opens, ships, needs installed and times. Torch-free.

Every list of allowed values elsewhere is built from here: a hardware profile's ``runtime``, the
export formats and precisions, a bundle's artifacts, the CLIs' choices, the messages that name
the known values. Nothing falls through to a default runtime: an unknown name is one error that
names the known ones (``runtime()``, ``backend()``). The words (docs/design.md, "Runtimes"):

- **runtime**: what a device runs a model in, as a hardware profile names it (``onnxruntime-cpu``,
  ``openvino-cpu``, ``tensorrt``, ``torch-cuda``): a ``Runtime`` here;
- **backend**: the library that opens an exported file (``onnxruntime``, ``openvino``, ``tensorrt``),
  as export.json, the validation report and a bundle's manifest name it: a ``Backend`` here;
- **format**: the kind of file an export writes for a backend (``onnx``, ``openvino``, ``tensorrt``);
- **provider**: ONNX Runtime's execution provider (``cpu``, ``cuda``, ``tensorrt``; pathnas-infer's
  ``--device``), or OpenVINO's device (``CPU``).

Adding a runtime (docs/extending.md): a ``Runtime`` entry below, and, for a library not yet here, a
``Backend`` entry, its runner class (runners.py) and its export function (export/artifacts.py).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from pathnas.errors import ConfigError, MissingFileError

from .runners import PRECISIONS, ModelRunner, OpenVinoRunner, OrtRunner, ProviderError, TensorRTRunner
# The largest batch a TensorRT engine is built for (its optimisation profile spans 1..this); the other
# runtimes take any batch, since the ONNX file's batch axis is dynamic.
ENGINE_MAX_BATCH = 8


@dataclass(frozen=True)
class Backend:
    """A library that opens exported files, and the export format it opens."""

    name: str  # as export.json, validation reports and bundle manifests name it
    title: str  # in words, for messages
    format: str | None  # the export format made for it (export/artifacts.py EXPORTERS); None: nothing is exported
    suffixes: tuple[str, ...]  # the files it opens
    precisions: tuple[str, ...]  # those an export ships for it (the others are skipped, with the reason)
    distributions: tuple[str, ...]  # what must be installed (their versions are recorded with timings)
    modules: tuple[str, ...]  # what must import
    extra: str | None  # pathnas-edge's pip extra that brings them (None: a base dependency)
    runner: type[ModelRunner] | None  # opens a file: ``runner.open(path, threads, precision, provider, spin)``

    @property
    def install(self) -> str:
        """How to install this backend, for messages."""
        return "pip install pathnas-edge" if self.extra is None else f"pip install 'pathnas-edge[{self.extra}]'"

    def installed(self) -> bool:
        return all(_installed(module) for module in self.modules)

    def require(self) -> None:
        """ProviderError naming the missing extra when this backend is not installed here."""
        if not self.installed():
            raise ProviderError(f"this model runs on {self.name}, which is not installed here: {self.install}")


@dataclass(frozen=True)
class Runtime:
    """A hardware profile's runtime: which backend opens each of its files, with which provider."""

    name: str
    summary: str
    opens: tuple[tuple[Backend, str | None], ...]  # (backend, provider) in order; a file goes to the first whose
    #                                                 backend opens its suffix
    bundles: Backend | None  # whose validated artifacts a bundle for it carries (None: it has no bundle)
    gpu: bool  # runs on an NVIDIA GPU (a machine record names the GPU; a profile matches on it)
    times_packs: bool  # times a latency pack's exported files (`pathnas-infer profile`); else PyTorch modules
    shared_thread_pool: bool = False  # timed in a process whose sessions share one thread pool (runners.py)
    process_per_round: bool = True  # False: every process would build each file's engine anew

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for backend, _ in self.opens for s in backend.suffixes))

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(dict.fromkeys(backend for backend, _ in self.opens))

    @property
    def distributions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for backend in self.backends for d in backend.distributions))

    @property
    def install(self) -> str:
        return " and ".join(dict.fromkeys(backend.install for backend in self.backends))

    def installed(self) -> bool:
        return all(backend.installed() for backend in self.backends)

    def open(self, path: str | Path, threads: int | None = None, precision: str = "fp32",
             spin: bool = True) -> ModelRunner:
        """A runner for ``path`` in this runtime (under ``tensorrt`` an ONNX file runs in onnxruntime's
        TensorRT provider, which builds the engine on this GPU, and a serialized engine in TensorRT)."""
        path = Path(path)
        if not self.times_packs:
            raise ProviderError(f"runtime {self.name} times PyTorch modules, not exported files")
        for backend, provider in self.opens:
            if path.suffix in backend.suffixes:
                return open_runner(path, backend.name, threads, precision, provider, spin)
        raise ConfigError(f"{path}: runtime {self.name} runs {', '.join(self.suffixes)} files, "
                          f"not {path.suffix or 'a file without suffix'}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


ONNXRUNTIME = Backend("onnxruntime", "ONNX Runtime's CPU provider", "onnx", (".onnx",), ("fp32", "int8"),
                      ("onnxruntime",), ("onnxruntime",), None, OrtRunner)
OPENVINO = Backend("openvino", "OpenVINO's CPU plugin", "openvino", (".onnx", ".xml"), ("fp32", "int8"),
                   ("openvino",), ("openvino",), "runtime", OpenVinoRunner)
TENSORRT = Backend("tensorrt", "TensorRT", "tensorrt", (".engine", ".plan"), PRECISIONS,
                   ("tensorrt", "polygraphy"), ("tensorrt", "polygraphy"), "tensorrt", TensorRTRunner)
TORCH = Backend("torch", "PyTorch", None, (), ("fp32", "fp16"), ("torch",), ("torch",), "toolchain", None)

BACKENDS: dict[str, Backend] = {b.name: b for b in (ONNXRUNTIME, OPENVINO, TENSORRT, TORCH)}
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime-cpu", "ONNX Runtime on the CPU", ((ONNXRUNTIME, "cpu"),), ONNXRUNTIME, gpu=False,
            times_packs=True, shared_thread_pool=True),
    Runtime("openvino-cpu", "OpenVINO on an Intel CPU", ((OPENVINO, "CPU"),), OPENVINO, gpu=False, times_packs=True),
    Runtime("tensorrt", "TensorRT on an NVIDIA GPU or Jetson (ONNX files through onnxruntime's TensorRT provider)",
            ((ONNXRUNTIME, "tensorrt"), (TENSORRT, None)), ONNXRUNTIME, gpu=True, times_packs=True,
            process_per_round=False),
    Runtime("torch-cuda", "PyTorch modules on a CUDA GPU (latency tables only: no export, no bundle)",
            ((TORCH, "cuda"),), None, gpu=True, times_packs=False),
)}

# The allowed values of each list, built from the registry.
FORMATS = tuple(dict.fromkeys(b.format for b in BACKENDS.values() if b.format))  # export formats
FILE_BACKENDS = tuple(b.name for b in BACKENDS.values() if b.runner is not None)  # backends that open files
BUNDLE_BACKENDS = tuple(dict.fromkeys(r.bundles.name for r in RUNTIMES.values() if r.bundles))
BUNDLE_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.bundles)
PACK_RUNTIMES = tuple(name for name, r in RUNTIMES.items() if r.times_packs)
# The backends that run on this CPU (INT8 accuracy is controlled and its speed judged on each here).
CPU_BACKENDS = tuple(dict.fromkeys(b.name for r in RUNTIMES.values() if not r.gpu for b in r.backends))


def runtime(name: str) -> Runtime:
    """The runtime of this name; an unknown one is a ConfigError naming the known ones."""
    try:
        return RUNTIMES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"runtime {name!r}: allowed values are {', '.join(RUNTIMES)}") from None


def backend(name: str) -> Backend:
    """The backend of this name that opens files; an unknown one is a ConfigError naming the known ones."""
    found = BACKENDS.get(name) if isinstance(name, str) else None
    if found is None or found.runner is None:
        raise ConfigError(f"backend {name!r}: allowed values are {', '.join(FILE_BACKENDS)}")
    return found


def backend_of_format(fmt: str) -> Backend:
    """The backend an export format is made for."""
    for b in BACKENDS.values():
        if b.format == fmt:
            return b
    raise ConfigError(f"format {fmt!r}: allowed values are {', '.join(FORMATS)}")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: allowed values are {', '.join(PRECISIONS)}")
    return precision


def open_runner(path: str | Path, backend_name: str, threads: int | None = None, precision: str = "fp32",
                provider: str | None = None, spin: bool = True) -> ModelRunner:
    """A runner for an artifact of a backend (onnxruntime, openvino, tensorrt).

    ``provider`` is the backend's: onnxruntime's execution provider (cpu, cuda, tensorrt; default cpu),
    OpenVINO's device (default CPU). An INT8 model is a Q/DQ ONNX file, so ``precision`` only sets
    OpenVINO's inference precision hint and TensorRT's build flags through onnxruntime. ``spin``: see
    ``runners.ort_session`` (onnxruntime only).
    """
    path = Path(path)
    found = backend(backend_name)
    check_precision(precision)
    if path.suffix not in found.suffixes:
        raise ConfigError(f"{path}: {found.name} runs {', '.join(found.suffixes)} files, "
                          f"not {path.suffix or 'a file without suffix'}")
    if not path.is_file():
        raise MissingFileError(f"model {path} does not exist")
    found.require()
    return found.runner.open(path, threads=threads, precision=precision, provider=provider, spin=spin)


def open_profile_runner(path: str | Path, runtime_name: str, threads: int | None = None,
                        precision: str = "fp32") -> ModelRunner:
    """A runner for ``path`` in a hardware profile's runtime."""
    return runtime(runtime_name).open(path, threads, precision)
