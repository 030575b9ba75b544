"""ONNX -> TensorRT engine through NVIDIA's Polygraphy, built on the machine that will run it.

An engine is a device artifact: engines are cached under a key of the TensorRT version, the
GPU, the ONNX file, the input shape and the precision. INT8 builds the Q/DQ model as a
strongly typed network (explicit quantization: the Q/DQ nodes fix the types and scales, no
calibrator; NVIDIA's advice since TensorRT 10, and TensorRT 11 has no INT8 flag). FP16 sets
the builder's FP16 flag on the FP32 graph where the installed TensorRT still has it.
Polygraphy does the parsing, configuration, building and saving; this module only decides
what to build.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from pathnas.deploy.runners import cuda_device_count
from pathnas.deploy.runtimes import ENGINE_MAX_BATCH, TENSORRT
from pathnas.errors import ConfigError
from pathnas.io import atomic_path, sha256_file


class Unavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here: the row is skipped with this reason, nothing pretends."""


def tensorrt_environment() -> tuple[object, str]:
    """The tensorrt module and this GPU's name; Unavailable saying what is missing otherwise."""
    try:
        import tensorrt as trt
        from polygraphy import cuda  # noqa: F401  (the builder below is Polygraphy's)
    except ImportError:
        raise Unavailable(f"TensorRT is not installed ({TENSORRT.install} on the NVIDIA machine)") from None
    if cuda_device_count() == 0:
        raise Unavailable("no CUDA GPU on this machine")
    try:
        import torch

        gpu = torch.cuda.get_device_name()
    except Exception:  # the engine key only needs a stable name; torch may be absent or CPU-only
        gpu = "cuda:0"
    return trt, gpu


def engine_path(cache_dir: Path, onnx_path: Path, input_shape: tuple[int, ...], precision: str) -> Path:
    trt, gpu = tensorrt_environment()
    key = hashlib.sha256(f"{trt.__version__}|{gpu}|{sha256_file(onnx_path)[:16]}|{input_shape}|{precision}"
                         .encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{precision}-{key}.engine"


def build_engine(onnx_path: Path, cache_dir: Path, input_shape: tuple[int, ...], precision: str,
                 max_batch: int = ENGINE_MAX_BATCH, workspace_bytes: int = 1 << 30) -> Path:
    """The cached engine for this GPU, or a freshly built one."""
    if precision not in ("fp16", "int8", "fp32"):
        raise ConfigError(f"precision {precision!r}: allowed values are fp32, fp16, int8")
    trt, _gpu = tensorrt_environment()
    path = engine_path(cache_dir, onnx_path, input_shape, precision)
    if path.exists():
        return path
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise Unavailable(f"TensorRT {trt.__version__} has no FP16 builder flag; FP16 needs an FP16 ONNX graph")
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile)

    import onnx

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    one = (1, *input_shape[1:])
    profile = Profile().add(input_name, min=one, opt=one, max=(max_batch, *input_shape[1:]))
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=precision == "int8")
    config = CreateConfig(fp16=precision == "fp16", profiles=[profile],
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes})
    serialized = EngineBytesFromNetwork(network, config=config)()
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(serialized))
    return path
