"""Running exported artifacts in their runtimes, with a check of what really runs.

ONNX Runtime silently falls back to the CPU provider when the one asked for cannot
load, and a latency or accuracy figure from the wrong provider is worse than none, so
the runners here fail instead. Torch-free: the workstation runtime is built on this.

Every runner has the same small interface (``ModelRunner``): ``.open(path, threads, precision,
provider, spin)`` makes one, ``.run(ndarray) -> ndarray`` (first output), ``.provider`` (what
actually ran, in words), ``.input_shape`` (``None`` for a dynamic axis),
``.fixed_input_shape(batch_size)`` and ``.close()``. Which runner opens which file, for which
runtime, is the registry's to say (runtimes.py: ``open_runner``, ``Runtime.open``).
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from pathnas.errors import ConfigError, UserError

log = logging.getLogger("pathnas.deploy")

# onnxruntime's execution providers (pathnas-infer's --device), each with the ones it may fall back to in
# the session; the first must be the one that runs (``ort_session`` refuses a silent fallback).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PRECISIONS = ("fp32", "fp16", "int8")  # runtimes.PRECISIONS imports these


class ProviderError(UserError):
    """The runtime, execution provider or device asked for is missing here or did not run the model."""


class ModelRunner:
    """One model file opened in a backend (named so beside deploy/infer.py's Runner, which runs inputs)."""

    input_shape: tuple[int | None, ...]
    provider: str

    @classmethod
    def open(cls, path: Path, threads: int | None = None, precision: str = "fp32", provider: str | None = None,
             spin: bool = True) -> "ModelRunner":  # pragma: no cover - interface
        """The runner of ``path``; ``provider``: the backend's execution provider or device (None: its default)."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def fixed_input_shape(self, batch_size: int = 1) -> tuple[int, ...]:
        """The input shape with its dynamic axes (the batch) set to ``batch_size``."""
        return tuple(batch_size if d is None else d for d in self.input_shape)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


# Intra-op threads of this process's shared ONNX Runtime thread pool, once one is made.
_shared_pool_threads: int | None = None
# False once a shared pool was wanted but this onnxruntime cannot make one (use_shared_thread_pool).
_sessions_spin = True


def use_shared_thread_pool(threads: int) -> bool:
    """Run every ONNX Runtime session of this process on one shared pool of ``threads`` threads: only
    in a process that does nothing but time a pack (`pathnas-infer profile`'s rounds). Once made,
    ONNX Runtime refuses every later session of the process that asks for a pool of its own, also
    those other libraries make (onnxruntime.quantization's calibrators): ``ort_session`` puts ours on
    it, theirs fail. Returns False (and warns) when this process's pool has another size, or when this
    ONNX Runtime cannot make one (then every session of the process gets workers that do not spin).

    Why: each session otherwise owns a pool whose workers spin for a while after every run, and
    each pool is placed anew. Timing the 55 files of a demo latency pack in alternation, each
    session's spinning workers competed with the next one's on a 2-core machine: the same parts
    timed 0.7-1.3x from one run to the next, end-to-end paths ~4x slower than alone, and a table
    predicted 50 % of its own held-out paths within ±10 %. One shared pool of the profile's
    threads is what a deployed process running one model has (benchmarks/latency_split.py)."""
    global _shared_pool_threads, _sessions_spin
    if _shared_pool_threads is None:
        import onnxruntime as ort

        # Not in ONNX Runtime's public Python API (the C API has the global pools): a release without it
        # gets the next best, a pool per session whose idle workers sleep at once instead of spinning.
        make_pool = getattr(ort.capi._pybind_state, "set_global_thread_pool_sizes", None)
        if make_pool is None:
            if _sessions_spin:
                log.warning("onnxruntime %s cannot share one thread pool between sessions: timing with a pool per "
                            "session whose workers do not spin", ort.__version__)
            _sessions_spin = False
            return False
        make_pool(threads, 1)
        _shared_pool_threads = threads
    elif _shared_pool_threads != threads:
        log.warning("this process already runs ONNX Runtime on a shared pool of %d threads, not %d: time each "
                    "thread count in a process of its own", _shared_pool_threads, threads)
        return False
    return True


def ort_session(path: str | Path, provider: str = "cpu", threads: int | None = None, precision: str = "fp32",
                spin: bool = True):
    """An onnxruntime InferenceSession on execution ``provider`` (cpu, cuda, tensorrt), verified to run on it.

    ``precision`` only matters for TensorRT, which builds FP32 engines unless told otherwise
    (INT8 comes from the Q/DQ nodes of a quantized model, with FP16 for the layers left in float).
    In a process with a shared thread pool (``use_shared_thread_pool``) the session runs on it.
    ``spin=False``: its idle workers sleep at once instead of spinning for the next run, leaving the
    CPU to other threads of the process (a slide's readers decoding the next tiles).
    """
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ConfigError(f"execution provider {provider!r}: allowed values are {', '.join(PROVIDERS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: allowed values are {', '.join(PRECISIONS)}")
    wanted = PROVIDERS[provider][0]
    if wanted not in ort.get_available_providers():
        raise ProviderError(
            f"{wanted} is not available in this onnxruntime build (available: {', '.join(ort.get_available_providers())})"
        )
    options = ort.SessionOptions()
    if _shared_pool_threads is not None:
        options.use_per_session_threads = False
    elif threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not (spin and _sessions_spin):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list = list(PROVIDERS[provider])
    if provider == "tensorrt":
        providers[0] = (wanted, {"trt_fp16_enable": precision != "fp32", "trt_int8_enable": precision == "int8"})
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != wanted:
        raise ProviderError(f"{path}: asked for {wanted} but onnxruntime runs {session.get_providers()[0]}")
    return session


class OrtRunner(ModelRunner):
    """An ONNX model in onnxruntime."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None, precision: str = "fp32",
                 spin: bool = True):
        self.session = ort_session(path, provider, threads, precision, spin)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = tuple(_dim(d) for d in first.shape)
        self.provider = self.session.get_providers()[0]

    @classmethod
    def open(cls, path, threads=None, precision="fp32", provider=None, spin=True) -> "OrtRunner":
        return cls(path, provider or "cpu", threads, precision, spin)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


class OpenVinoRunner(ModelRunner):
    """An ONNX model or OpenVINO IR (.xml) compiled for an OpenVINO device, FP32 by default."""

    def __init__(self, path: str | Path, device: str = "CPU", threads: int | None = None, precision: str = "f32"):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        if device not in core.available_devices:
            raise ProviderError(f"OpenVINO device {device} is not available (available: {', '.join(core.available_devices)})")
        config = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            hints.inference_precision: {"f32": ov.Type.f32, "f16": ov.Type.f16, "bf16": ov.Type.bf16}[precision],
        }
        if threads:
            config[props.inference_num_threads] = threads
        self.compiled = core.compile_model(str(path), device, config)
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
        self.provider = f"OpenVINO {device} ({self.compiled.get_property(hints.inference_precision).to_string()})"

    @classmethod
    def open(cls, path, threads=None, precision="fp32", provider=None, spin=True) -> "OpenVinoRunner":
        # OpenVINO names its devices in capitals (pathnas-infer's --device cpu is its CPU). An INT8 model is a
        # Q/DQ file: the hint only says whether float layers may run in f16.
        return cls(path, (provider or "CPU").upper(), threads, "f16" if precision == "fp16" else "f32")

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0])

    def close(self) -> None:
        self.request = self.compiled = None


class TensorRTRunner(ModelRunner):
    """A serialized TensorRT engine (built on this GPU), run through NVIDIA's Polygraphy TrtRunner.

    ``run`` copies the input to the GPU, runs the engine, synchronises and copies the first
    output back, so a timed call covers the whole inference.
    """

    def __init__(self, path: str | Path):
        try:
            from polygraphy.backend.trt import EngineFromPath, TrtRunner
        except ImportError:
            raise ProviderError("TensorRT engines need TensorRT and Polygraphy, which do not import here") from None
        if cuda_device_count() == 0:
            raise ProviderError("TensorRT engines need an NVIDIA GPU; the CUDA runtime finds none here")
        try:
            self._runner = TrtRunner(EngineFromPath(str(path)))
            self._runner.activate()
        except Exception as err:  # Polygraphy reports a foreign or damaged engine in its own exception types
            raise ProviderError(f"{path}: TensorRT could not load the engine (built for another GPU or "
                                f"TensorRT version?): {err}") from None
        self.input_name, (_dtype, shape) = next(iter(self._runner.get_input_metadata().items()))
        self.input_shape = tuple(_dim(d) for d in shape)
        import tensorrt

        self.provider = f"TensorRT {tensorrt.__version__} (CUDA, Polygraphy)"

    @classmethod
    def open(cls, path, threads=None, precision="fp32", provider=None, spin=True) -> "TensorRTRunner":
        return cls(path)  # an engine's precision was fixed when it was built

    def run(self, x: np.ndarray) -> np.ndarray:
        outputs = self._runner.infer({self.input_name: np.ascontiguousarray(x, np.float32)}, copy_outputs_to_host=True)
        return np.asarray(next(iter(outputs.values())))

    def close(self) -> None:
        if self._runner is not None and self._runner.is_active:
            self._runner.deactivate()
        self._runner = None


def cuda_device_count() -> int:
    """NVIDIA GPUs the CUDA runtime sees (0 without one, or without Polygraphy's CUDA wrapper)."""
    try:
        from polygraphy import cuda

        lib = cuda.wrapper().handle
    except Exception:  # no polygraphy, no libcudart: no GPU this runtime can use
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 else 0
