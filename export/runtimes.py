"""Opening exported artifacts in their runtimes, with a check of what really runs.

ONNX Runtime silently falls back to the CPU provider when the one asked for cannot
load; a latency or accuracy figure from the wrong provider is worse than none, so
the session here fails instead.
"""
from __future__ import annotations

from pathlib import Path

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderError(RuntimeError):
    """The execution provider asked for did not run the model."""


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
