"""ONNX -> TensorRT engine, built on the machine that will run it (an engine is a device artifact).

Engines are cached under a key of the TensorRT version, the GPU, the ONNX file, the input
shape and the precision. INT8 builds the Q/DQ model as a strongly typed network (explicit
quantization: the Q/DQ nodes fix the types and scales, no calibrator, no precision flags;
NVIDIA's advice since 10.x, and TensorRT 11 has no INT8 flag). FP16 sets the builder's FP16
flag on the FP32 graph (TensorRT 10; TensorRT 11 removed it and needs an FP16 graph instead,
which is not built here, so that row is skipped with the reason).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from pathnas.io import write_bytes_atomic


class Unavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here: the row is skipped with this reason, nothing pretends."""


def tensorrt_environment() -> tuple[object, str]:
    try:
        import tensorrt as trt
    except ImportError:
        raise Unavailable("TensorRT is not installed (pip install 'pathnas-edge[tensorrt]' on an NVIDIA machine)") from None
    try:
        import torch

        if not torch.cuda.is_available():
            raise Unavailable("no CUDA GPU on this machine")
        gpu = torch.cuda.get_device_name()
    except ImportError:
        raise Unavailable("CUDA PyTorch is needed to query the GPU") from None
    return trt, gpu


def engine_path(cache_dir: Path, onnx_path: Path, input_shape: tuple[int, ...], precision: str) -> Path:
    trt, gpu = tensorrt_environment()
    onnx_digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(f"{trt.__version__}|{gpu}|{onnx_digest}|{input_shape}|{precision}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{precision}-{key}.engine"


def build_engine(onnx_path: Path, cache_dir: Path, input_shape: tuple[int, ...], precision: str,
                 max_batch: int = 8, workspace_bytes: int = 1 << 30) -> Path:
    """The cached engine for this GPU, or a freshly built one (TensorRT 10 Python API)."""
    if precision not in ("fp16", "int8", "fp32"):
        raise ValueError(f"precision {precision!r}: allowed values are fp32, fp16, int8")
    trt, _gpu = tensorrt_environment()
    path = engine_path(cache_dir, onnx_path, input_shape, precision)
    if path.exists():
        return path
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise Unavailable(f"TensorRT {trt.__version__} has no FP16 builder flag; FP16 needs an FP16 ONNX graph")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10; strong typing makes the Q/DQ graph the source of truth.
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision == "int8" else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    one = (1, *input_shape[1:])
    profile.set_shape(name, one, one, (max_batch, *input_shape[1:]))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    write_bytes_atomic(path, bytes(serialized))
    return path
