"""Running exported artifacts in their runtimes, with a check of what really runs.

ONNX Runtime silently falls back to the CPU provider when the one asked for cannot
load, and a latency or accuracy figure from the wrong provider is worse than none, so
the runners here fail instead. This module imports neither torch nor training code:
the torch-free deployment path uses it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Hardware-profile runtimes -> how an artifact runs there.
RUNTIMES = ("onnxruntime-cpu", "openvino-cpu", "tensorrt", "torch-cuda")


class ProviderError(RuntimeError):
    """The execution provider or device asked for did not run the model."""


def ort_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime InferenceSession on ``device`` (cpu, cuda, tensorrt), provider verified."""
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise ValueError(f"device {device!r}: allowed values are {', '.join(PROVIDERS)}")
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
    session = ort.InferenceSession(str(path), sess_options=options, providers=PROVIDERS[device])
    if session.get_providers()[0] != wanted:
        raise ProviderError(f"{path}: asked for {wanted} but onnxruntime runs {session.get_providers()[0]}")
    return session


class OrtRunner:
    """An ONNX model in onnxruntime."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        self.session = ort_session(path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.provider = self.session.get_providers()[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


class OpenVinoRunner:
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
        self.provider = f"OpenVINO {device} ({self.compiled.get_property(hints.inference_precision).to_string()})"

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0])

    def close(self) -> None:
        self.request = self.compiled = None


def open_runner(path: str | Path, runtime: str, threads: int | None = None):
    """A runner for ``path`` in a hardware profile's runtime (see RUNTIMES)."""
    if runtime == "onnxruntime-cpu":
        return OrtRunner(path, "cpu", threads)
    if runtime == "openvino-cpu":
        return OpenVinoRunner(path, "CPU", threads)
    if runtime == "tensorrt":
        return OrtRunner(path, "tensorrt", threads) if str(path).endswith(".onnx") else TensorRTRunner(path)
    if runtime == "torch-cuda":
        raise ProviderError("runtime torch-cuda times PyTorch modules, not exported files")
    raise ValueError(f"runtime {runtime!r}: allowed values are {', '.join(RUNTIMES)}")


class TensorRTRunner:
    """A serialized TensorRT engine (built on this GPU), run through the TensorRT 10 Python API."""

    def __init__(self, path: str | Path):
        try:
            import tensorrt as trt
            import torch  # device buffers; TensorRT machines have CUDA PyTorch
        except ImportError as err:
            raise ProviderError(f"TensorRT engines need the tensorrt package and CUDA ({err})") from None
        if not torch.cuda.is_available():
            raise ProviderError("TensorRT engines need an NVIDIA GPU; CUDA is not available here")
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ProviderError(f"{path}: TensorRT could not deserialize the engine (built for another GPU/version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.provider = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        inp = torch.from_numpy(np.ascontiguousarray(x)).cuda()
        self.context.set_input_shape(self.input_name, tuple(inp.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), device="cuda", dtype=torch.float32)
        self.context.set_tensor_address(self.input_name, inp.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.cpu().numpy()

    def close(self) -> None:
        self.context = self.engine = None
