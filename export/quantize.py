"""Static INT8 post-training quantization: ONNX Runtime's QDQ format, per-channel weights.

Calibration images come from the TRAIN split (never val or test). Activations and weights
are symmetric signed INT8 so the same Q/DQ model also serves TensorRT's explicit
quantization (TensorRT accepts only zero-point-0 INT8) and OpenVINO, which reads it as
FakeQuantize. NNCF (not installed) is not used: with the settings below OpenVINO's INT8
agreed with PyTorch exactly as often as ONNX Runtime's (98.96% vs 98.96%) and ran at
0.96-0.99x its FP32 latency on this AVX2 CPU (benchmarks/export_latency.py), so NNCF could
buy little here.

Weights use 7 bits (``reduce_range``) by default. x86 CPUs without VNNI (AVX2 only) multiply
INT8 with VPMADDUBSW, whose pairwise sums saturate at int16 when both operands use the full
8-bit range. Measured on the demo model (576 independent synthetic images, agreement with
PyTorch top-1): full-range weights gave 96.5% in ONNX Runtime and 80.4% in OpenVINO
(-9.7 points of accuracy); 7-bit weights gave 99.0% in both (-0.7 points), cosine 0.9995.
On VNNI CPUs and GPUs full range is safe: ``reduce_range=False``. The first convolution and the
classifier stay in float by default: they see the raw input and produce the logits, and
quantizing them costs the most accuracy for the least speed. Only Conv, Gemm and MatMul are
quantized: measured on the demo model, also quantizing the element-wise ops of the
squeeze-excitation gates (Mul, Sigmoid, Add) dropped top-1 agreement with FP32 from 99.2%
to 95% and bought no speed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from pathnas.errors import InvalidFileError
from pathnas.io import atomic_path, write_json_atomic

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


def _reader(input_name: str, batches: list[np.ndarray]):
    """An onnxruntime CalibrationDataReader over preprocessed training images."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._iter = iter({input_name: b} for b in batches)

        def get_next(self):
            return next(self._iter, None)

    return Reader()


def float_nodes(model_path: Path, keep_first_conv: bool = True, keep_classifier: bool = True) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul/Conv producing the output (graph order is topological)."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    names = []
    if keep_first_conv:
        first = next((n for n in nodes if n.op_type == "Conv"), None)
        if first is not None:
            names.append(first.name)
    if keep_classifier:
        last = next((n for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul", "Conv")), None)
        if last is not None and last.name not in names:
            names.append(last.name)
    return names


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Iterable[np.ndarray], keep_first_conv: bool = True,
                  keep_classifier: bool = True, calibration_images: int | None = None, reduce_range: bool = True) -> dict:
    """Write the QDQ INT8 model atomically; returns what was done (for calibration.json)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="pathnas-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        excluded = float_nodes(prepared, keep_first_conv, keep_classifier)
        input_name = onnx.load(str(prepared)).graph.input[0].name
        batches = list(calibration)
        with atomic_path(out_path) as tmp_out:
            quantize_static(
                str(prepared), str(tmp_out), _reader(input_name, batches), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
    info = {"format": "QDQ", "quantized_ops": list(QUANTIZED_OPS), "activations": "int8 symmetric",
            "weights": f"int8 per-channel symmetric, {'7-bit (reduce_range)' if reduce_range else 'full 8-bit'} range",
            "calibration": "MinMax", "calibration_split": "train",
            "calibration_images": calibration_images or int(sum(b.shape[0] for b in batches)),
            "float_nodes": excluded, "source": str(fp32_path)}
    return info


def calibration_batches(calib_loader, images: int) -> list[np.ndarray]:
    """Preprocessed TRAIN-split images (the calib loader of pathnas.data.build_loaders)."""
    out, seen = [], 0
    for x, _ in calib_loader:
        x = x[: images - seen].numpy().astype(np.float32)
        out.append(x)
        seen += x.shape[0]
        if seen >= images:
            break
    if not out:
        raise InvalidFileError("no calibration images: the training split is empty")
    return out


def write_calibration_record(path: Path, info: dict) -> None:
    write_json_atomic(path, info)
