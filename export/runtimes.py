"""Running exported artifacts in their runtimes, with a check of what really runs.

ONNX Runtime silently falls back to the CPU provider when the one asked for cannot
load, and a latency or accuracy figure from the wrong provider is worse than none, so
the runners here fail instead. This module imports neither torch nor training code:
the torch-free deployment path uses it.

Every runner has the same small interface: ``.run(ndarray) -> ndarray`` (first output),
``.provider`` (what actually ran, in words), ``.input_shape`` (``None`` for a dynamic
axis), ``.fixed_input_shape(batch_size)`` and ``.close()``; ``open_runner`` picks one for a
hardware profile's runtime.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Hardware-profile runtimes -> the artifact files each one runs.
RUNTIME_SUFFIXES = {
    "onnxruntime-cpu": (".onnx",),
    "openvino-cpu": (".onnx", ".xml"),
    "tensorrt": (".onnx", ".engine", ".plan"),
}
RUNTIMES = (*RUNTIME_SUFFIXES, "torch-cuda")
PRECISIONS = ("fp32", "fp16", "int8")  # as hardware profiles name them


class ProviderError(RuntimeError):
    """The execution provider or device asked for did not run the model."""


class Runner:
    input_shape: tuple[int | None, ...]
    provider: str

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


def ort_session(path: str | Path, device: str = "cpu", threads: int | None = None, precision: str = "fp32"):
    """An onnxruntime InferenceSession on ``device`` (cpu, cuda, tensorrt), provider verified.

    ``precision`` only matters for TensorRT, which builds FP32 engines unless told otherwise
    (INT8 comes from the Q/DQ nodes of a quantized model, with FP16 for the layers left in float).
    """
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise ValueError(f"device {device!r}: allowed values are {', '.join(PROVIDERS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: allowed values are {', '.join(PRECISIONS)}")
    wanted = PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        raise ProviderError(
            f"{wanted} is not available in this onnxruntime build (available: {', '.join(ort.get_available_providers())})"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers: list = list(PROVIDERS[device])
    if device == "tensorrt":
        providers[0] = (wanted, {"trt_fp16_enable": precision != "fp32", "trt_int8_enable": precision == "int8"})
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if session.get_providers()[0] != wanted:
        raise ProviderError(f"{path}: asked for {wanted} but onnxruntime runs {session.get_providers()[0]}")
    return session


class OrtRunner(Runner):
    """An ONNX model in onnxruntime."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, precision: str = "fp32"):
        self.session = ort_session(path, device, threads, precision)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = tuple(_dim(d) for d in first.shape)
        self.provider = self.session.get_providers()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


class OpenVinoRunner(Runner):
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

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0])

    def close(self) -> None:
        self.request = self.compiled = None


def open_runner(path: str | Path, runtime: str, threads: int | None = None, precision: str = "fp32") -> Runner:
    """A runner for ``path`` in a hardware profile's runtime (see RUNTIME_SUFFIXES) and precision.

    An INT8 model is a Q/DQ ONNX file, so on the CPU runtimes ``precision`` only sets OpenVINO's
    inference precision hint (f16 for fp16); TensorRT builds an engine for it from ONNX.
    """
    path = Path(path)
    if runtime == "torch-cuda":
        raise ProviderError("runtime torch-cuda times PyTorch modules, not exported files")
    if runtime not in RUNTIME_SUFFIXES:
        raise ValueError(f"runtime {runtime!r}: allowed values are {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: allowed values are {', '.join(PRECISIONS)}")
    if path.suffix not in RUNTIME_SUFFIXES[runtime]:
        raise ValueError(f"{path}: runtime {runtime} runs {', '.join(RUNTIME_SUFFIXES[runtime])} files, "
                         f"not {path.suffix or 'a file without suffix'}")
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist")
    if runtime == "onnxruntime-cpu":
        return OrtRunner(path, "cpu", threads)
    if runtime == "openvino-cpu":
        return OpenVinoRunner(path, "CPU", threads, "f16" if precision == "fp16" else "f32")
    return OrtRunner(path, "tensorrt", threads, precision) if path.suffix == ".onnx" else TensorRTRunner(path)


class CudaRuntime:
    """The few CUDA runtime calls a TensorRT engine needs, through ctypes (no torch, no pycuda)."""

    HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind

    def __init__(self):
        self.lib = self._load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        count = ctypes.c_int(0)
        if self.lib.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value == 0:
            raise ProviderError("TensorRT engines need an NVIDIA GPU; the CUDA runtime finds none here")

    @staticmethod
    def _load():
        import ctypes.util
        import importlib.util

        candidates = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12"]
        # pip's nvidia-cuda-runtime wheels keep the library inside site-packages, off the loader path.
        spec = importlib.util.find_spec("nvidia")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidates += sorted(str(p) for p in Path(folder).glob("**/libcudart.so*"))
        candidates += sorted(str(p) for p in Path("/usr/local/cuda/lib64").glob("libcudart.so*"))
        for name in filter(None, candidates):
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        raise ProviderError("TensorRT engines need the CUDA runtime (libcudart), which is not installed here")

    def check(self, status: int, call: str) -> None:
        if status != 0:
            raise ProviderError(f"CUDA {call} failed: {self.lib.cudaGetErrorString(status).decode()}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self.check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self.check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), host.ctypes.data_as(ctypes.c_void_p),
                                       ctypes.c_size_t(host.nbytes), self.HOST_TO_DEVICE), "cudaMemcpy")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self.check(self.lib.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                       ctypes.c_size_t(host.nbytes), self.DEVICE_TO_HOST), "cudaMemcpy")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self.check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return handle.value or 0

    def synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def destroy_stream(self, stream: int) -> None:
        self.check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


class TensorRTRunner(Runner):
    """A serialized TensorRT engine (built on this GPU), run through the TensorRT 10 Python API.

    ``run`` copies the input in, enqueues the engine on its own stream, synchronises and
    copies the output back, so a timed call covers the whole inference. Device buffers are
    kept per input shape.
    """

    def __init__(self, path: str | Path):
        try:
            import tensorrt as trt
        except ImportError:
            raise ProviderError("TensorRT engines need the tensorrt package (pip install 'pathnas-edge[tensorrt]' "
                                "on the NVIDIA machine); it is not installed here") from None
        self.cuda = CudaRuntime()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ProviderError(f"{path}: TensorRT could not deserialize the engine (built for another GPU/version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.input_shape = tuple(_dim(d) for d in self.engine.get_tensor_shape(self.input_name))
        self.stream = self.cuda.stream()
        self._buffers: dict[tuple[int, ...], tuple[int, int, tuple[int, ...]]] = {}
        self.provider = f"TensorRT {trt.__version__} (CUDA)"

    def _buffers_for(self, shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
        if shape not in self._buffers:
            self.context.set_input_shape(self.input_name, shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            inp = self.cuda.malloc(int(np.prod(shape)) * self.input_dtype.itemsize)
            out = self.cuda.malloc(int(np.prod(out_shape)) * self.output_dtype.itemsize)
            self._buffers[shape] = (inp, out, out_shape)
        return self._buffers[shape]

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        inp, out, out_shape = self._buffers_for(tuple(x.shape))
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, inp)
        self.context.set_tensor_address(self.output_name, out)
        self.cuda.to_device(inp, x)
        if not self.context.execute_async_v3(self.stream):
            raise ProviderError("TensorRT failed to enqueue the engine")
        self.cuda.synchronize(self.stream)
        result = np.empty(out_shape, dtype=self.output_dtype)
        self.cuda.to_host(result, out)
        return result

    def close(self) -> None:
        if self.context is None:
            return
        for inp, out, _ in self._buffers.values():
            self.cuda.free(inp)
            self.cuda.free(out)
        self._buffers.clear()
        self.cuda.destroy_stream(self.stream)
        self.context = self.engine = None
