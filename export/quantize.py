"""Static INT8 post-training quantization with accuracy control: ONNX Runtime's QDQ format.

Calibration images come from the TRAIN split (never val or test). Activations and weights
are symmetric signed INT8, weights per channel, so the same Q/DQ model also serves TensorRT's
explicit quantization (zero-point-0 INT8 only) and OpenVINO (which reads it as FakeQuantize
and, measured on the demo model, gives the same outputs as ONNX Runtime). Biases stay float:
ONNX Runtime still fuses each convolution into an integer kernel (it quantizes the bias when it
loads the model), TensorRT's explicit quantization wants float biases, and INT32 biases with
their per-channel scales would cost the file more than float biases do.

Accuracy control (docs/design.md, "INT8 accuracy control"; the thresholds are its "Validation
thresholds": top-1 agreement with FP32 >= 98% and a metric drop of at most 1 point, on the VAL
split), once per runtime that runs the INT8 file on this machine (CONTROLLED_RUNTIMES): the same
QDQ graph is compiled differently by each (measured on the demo run, issue 19: ONNX Runtime 98.3%
agreement, OpenVINO 96.67% with the float layers chosen for ONNX Runtime), so each gets the float
layers its own figures need, and its own file when they differ (``runtime_file``):
1. every Conv/Gemm/MatMul is quantized, and the model is judged on val against the FP32 model;
2. if it misses, a sensitivity analysis ranks the layers: for each quantized layer, how much the
   logits' error (squared error relative to the FP32 logits' energy, over all val images)
   falls when that layer alone is put back in float;
3. layers go back to float, most sensitive first, until the model passes; a layer whose float
   weights would take the file over MAX_SIZE_RATIO of the FP32 file is skipped.
The record (RUN/quantize/calibration.json) lists, per runtime, the ranking, every step, the
layers that stayed float and the final figures on val (agreement, metric change, cosine, max
|delta|); a runtime that cannot pass is recorded as such, with the reason, and its INT8 artifact
is not offered for packaging (export/artifacts.py). TensorRT builds its engine from the ONNX
Runtime file: it is judged by `validate` on the GPU, not here.
NNCF's quantize_with_accuracy_control does this job for OpenVINO models; it is not used: it
controls the task metric only (not agreement with FP32, which docs/design.md also requires), it
would bring about 200 MB of dependencies (scipy, scikit-learn, ninja, pydot, psutil), and
OpenVINO runs this QDQ model as it is.

Weights use 7 bits (``reduce_range``) by default. x86 CPUs without VNNI (AVX2 only) multiply
INT8 with VPMADDUBSW, whose pairwise sums saturate at int16 when both operands use the full
8-bit range (measured on an AVX2-only host: full-range weights gave 96.5% agreement in ONNX
Runtime and 80.4% in OpenVINO, 7-bit weights 99.0% in both). On VNNI CPUs and GPUs full
range is safe: ``reduce_range=False``. Only Conv, Gemm and MatMul are quantized: also
quantizing the element-wise ops of the squeeze-excitation gates (Mul, Sigmoid, Add) dropped
top-1 agreement from 99.2% to 95% and bought no speed.
"""
from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from pathnas.deploy.runners import ProviderError
from pathnas.deploy.runtimes import CPU_BACKENDS, backend, open_runner
from pathnas.errors import ConfigError, InvalidFileError
from pathnas.io import atomic_path, write_json_atomic
from pathnas.settings import CalibrationSettings

log = logging.getLogger("pathnas.export")

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# The files this module writes into RUN/quantize (pathnas.pipeline.layout names them from here).
INT8_ONNX = "model_int8.onnx"  # the ONNX Runtime one; also TensorRT's source
CALIBRATION_RECORD = "calibration.json"
# Runtimes whose INT8 accuracy is controlled here, each on its own figures; ONNX Runtime first (its
# file is the canonical INT8 model).
CONTROLLED_RUNTIMES = CPU_BACKENDS  # the registry's CPU backends, ONNX Runtime first
# Issue 12: an INT8 file is at most 30% of the FP32 one (weights 1 byte instead of 4, plus
# scales and graph); accuracy control never keeps so many layers in float that it is larger.
MAX_SIZE_RATIO = 0.30


# -- the QDQ file --------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantizableNode:
    name: str
    op_type: str
    weights: int  # parameters of its weight tensor


def quantizable_nodes(model) -> list[QuantizableNode]:
    """The Conv/Gemm/MatMul nodes with a constant weight, in graph order (an onnx.ModelProto)."""
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    return [QuantizableNode(n.name, n.op_type, sizes[n.input[1]]) for n in model.graph.node
            if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in sizes]


# ONNX Runtime's names for what it adds, and shorter ones with the same meaning (the original
# tensor's name stays in front): on the demo model these suffixes were ~4% of the INT8 file.
SHORT_SUFFIXES = (("_QuantizeLinear_Output", "_q"), ("_DequantizeLinear_Output", "_dq"), ("_QuantizeLinear", "_Q"),
                  ("_DequantizeLinear", "_DQ"), ("_quantized", "_i8"), ("_zero_point", "_zp"))


def _short(name: str) -> str:
    for long, short in SHORT_SUFFIXES:
        if name.endswith(long):
            return name[: -len(long)] + short
    return name


def slim_qdq(model):
    """Drop what a QDQ model carries and no runtime needs; outputs are unchanged.

    - the shape annotations of every tensor (value_info);
    - the all-zero zero points of convolution weights (DequantizeLinear's default is zero). Only
      of convolutions: ONNX Runtime (1.32) fuses DQ -> Gemm into QGemm only when the weight's
      DequantizeLinear names its zero point, and without it ran the classifier as a float Gemm
      on dequantized weights: other kernels, other roundings (issue 19; the test compares the
      kernels ONNX Runtime chooses for both graphs);
    - one shared zero point per type instead of one per activation (all are a scalar 0);
    - ONNX Runtime's long suffixes of the tensors and nodes it adds (SHORT_SUFFIXES), where the
      shorter name is free; the graph's inputs and outputs keep their names.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    del graph.value_info[:]
    constants = {i.name: i for i in graph.initializer}

    def zero_scalar(name: str) -> bool:
        return name in constants and not constants[name].dims and not numpy_helper.to_array(constants[name]).any()

    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    shared: dict[int, str] = {}  # data type -> the one scalar zero point kept
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in constants:
            if consumers.get(node.output[0]) == {"Conv"} and not numpy_helper.to_array(
                    constants[node.input[2]]).any():
                del node.input[2]  # a convolution weight's zero point of zeros
        elif zero_scalar(node.input[2]):
            dtype = constants[node.input[2]].data_type
            rename[node.input[2]] = shared.setdefault(dtype, f"zero_point_{helper.tensor_dtype_to_np_dtype(dtype).name}")
    outer = {v.name for v in (*graph.input, *graph.output)}
    taken = set(constants) | {o for n in graph.node for o in n.output} | {n.name for n in graph.node} | set(shared.values())
    for name in sorted(taken - outer - set(rename)):
        short = _short(name)
        if short != name and short not in taken:
            rename[name] = short
            taken.add(short)
    final = {old: rename.get(new, new) for old, new in rename.items()}  # a shared zero point may be renamed too
    for node in graph.node:
        node.input[:] = [final.get(i, i) for i in node.input]
        node.output[:] = [final.get(o, o) for o in node.output]
        node.name = final.get(node.name, node.name)
    used = {name for node in graph.node for name in node.input}
    kept = []
    for init in graph.initializer:
        init.name = final.get(init.name, init.name)
        if init.name in used and init.name not in {k.name for k in kept}:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _reader(input_name: str, batches: list[np.ndarray]):
    """An onnxruntime CalibrationDataReader over preprocessed training images."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._iter = iter({input_name: b} for b in batches)

        def get_next(self):
            return next(self._iter, None)

    return Reader()


class QdqWriter:
    """One FP32 model, prepared and calibrated once; its QDQ INT8 model for any set of float layers.

    The activation ranges come from the FP32 model, so they do not depend on which layers are
    quantized: they are computed on the first call and cached (ONNX Runtime's calibration
    cache, where the installed version has it), and every later candidate costs only the
    graph rewrite.
    """

    def __init__(self, fp32_path: Path, calibration: Iterable[np.ndarray], workdir: Path, reduce_range: bool = True):
        import onnx
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.workdir = Path(workdir)
        self.prepared = self.workdir / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(self.prepared))
        model = onnx.load(str(self.prepared))
        self.input_name = model.graph.input[0].name
        self.nodes = quantizable_nodes(model)
        self.batches = list(calibration)
        if not self.batches:
            raise InvalidFileError("no calibration images: the training split is empty")
        self.images = int(sum(b.shape[0] for b in self.batches))
        self.reduce_range = reduce_range
        self._cache = ({"calibration_cache_path": str(self.workdir / "ranges.json")}
                       if "calibration_cache_path" in inspect.signature(quantize_static).parameters else {})

    def check_names(self, names: Iterable[str]) -> list[str]:
        known = [n.name for n in self.nodes]
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in known]
        if unknown:
            shown = ", ".join(known[:8]) + (f" ... ({len(known)} in all)" if len(known) > 8 else "")
            raise ConfigError(f"--keep-float {', '.join(unknown)}: no quantizable layer of that name; "
                              f"allowed: {shown}")
        return names

    def write(self, float_nodes: Iterable[str], out_path: Path) -> Path:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        raw = self.workdir / "raw.onnx"
        quantize_static(
            str(self.prepared), str(raw), _reader(self.input_name, self.batches), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=self.reduce_range,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(float_nodes),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
            **self._cache,
        )
        onnx.save(slim_qdq(onnx.load(str(raw))), str(out_path))
        return Path(out_path)


# -- judging a candidate on val --------------------------------------------------------------

@dataclass
class ValidationSet:
    """VAL images, their targets and the FP32 model's outputs: what an INT8 candidate is judged on."""

    batches: list[np.ndarray]
    targets: list[np.ndarray]
    task: str
    num_classes: int
    reference: list[np.ndarray]
    threads: int | None = None

    @classmethod
    def from_loader(cls, fp32_path: Path, loader, task: str, num_classes: int, max_images: int | None = None,
                    threads: int | None = None) -> "ValidationSet":
        from .validate import validation_batches

        batches, targets = validation_batches(loader, max_images)
        with open_runner(fp32_path, "onnxruntime", threads) as runner:
            reference = [runner.run(b) for b in batches]
        return cls(batches, targets, task, num_classes, reference, threads)

    @property
    def images(self) -> int:
        return int(sum(b.shape[0] for b in self.batches))

    def figures(self, path: Path, runtime: str = "onnxruntime") -> dict:
        """The validation figures of the model at ``path`` run by ``runtime`` (as the validation report
        computes them), plus ``relative_error``: the squared error of its outputs over the FP32 outputs'
        energy. The reference stays ONNX Runtime's FP32 outputs: FP32 agrees across runtimes to 1e-5."""
        from .validate import compare_outputs

        with open_runner(path, runtime, self.threads) as runner:
            outputs = [runner.run(b) for b in self.batches]
        row = compare_outputs(self.task, self.num_classes, self.reference, outputs, self.targets)
        err = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, self.reference))
        energy = sum(float((r**2).sum()) for r in self.reference)
        row["relative_error"] = err / max(energy, 1e-30)
        return row


def _passes(figures: dict) -> tuple[bool, str | None]:
    from .validate import verdict

    status, reason = verdict("int8", figures)
    return status == "passed", reason


def _summary(figures: dict) -> dict:
    keys = ("top1_agreement_pct", "metric_name", "metric", "metric_delta", "cosine", "max_abs_diff", "relative_error")
    return {k: figures[k] for k in keys}


@dataclass
class _Candidate:
    float_nodes: tuple[str, ...]
    path: Path
    size_ratio: float
    figures: dict | None = None
    passed: bool = False
    reason: str | None = None


@dataclass
class _Search:
    """The candidates of one runtime's accuracy-controlled quantization. ``files`` (each set of float
    layers written once, as (path, size ratio)) is shared by every runtime's search."""

    writer: QdqWriter
    validation: ValidationSet | None
    fp32_bytes: int
    runtime: str = "onnxruntime"
    files: dict = field(default_factory=dict)
    built: dict = field(default_factory=dict)

    def get(self, float_nodes: Iterable[str]) -> _Candidate:
        order = [n.name for n in self.writer.nodes]
        key = tuple(sorted(set(float_nodes), key=order.index))
        if key not in self.files:
            path = self.writer.write(key, self.writer.workdir / f"candidate{len(self.files)}.onnx")
            self.files[key] = (path, path.stat().st_size / self.fp32_bytes)
        if key not in self.built:
            path, ratio = self.files[key]
            c = _Candidate(key, path, ratio)
            if self.validation is not None:
                c.figures = self.validation.figures(path, self.runtime)
                c.passed, c.reason = _passes(c.figures)
            self.built[key] = c
        return self.built[key]


def _step(c: _Candidate, action: str, node: str | None = None) -> dict:
    step = {"action": action, "node": node, "float_nodes": len(c.float_nodes), "size_ratio": round(c.size_ratio, 4),
            "passed": c.passed}
    if c.figures:
        step.update({k: c.figures[k] for k in ("top1_agreement_pct", "metric_delta", "cosine", "relative_error")})
    return step


def runtime_file(path: Path, runtime: str) -> Path:
    """Where the INT8 model of ``runtime`` goes when its float layers differ from ONNX Runtime's
    (``path``, the canonical INT8 file): model_int8.onnx -> model_int8_openvino.onnx."""
    path = Path(path)
    return path if runtime == "onnxruntime" else path.with_name(f"{path.stem}_{runtime}{path.suffix}")


def controlled_runtimes() -> tuple[str, ...]:
    """CONTROLLED_RUNTIMES installed here (ONNX Runtime always is: it is a base dependency)."""
    present = []
    for runtime in CONTROLLED_RUNTIMES:
        try:
            backend(runtime).require()
        except ProviderError:
            continue
        present.append(runtime)
    return tuple(present)


def _control(search: _Search, forced: list[str], max_size_ratio: float) -> tuple[_Candidate, dict | None]:
    """One runtime's accuracy control from the layers forced float: its best candidate and its record."""
    best = search.get(forced)
    steps, ranking = [_step(best, "quantize every layer" + (" but those kept float" if forced else ""))], []
    if search.validation is None:
        return best, None
    if not best.passed:
        log.info("INT8 in %s misses the thresholds on val (%s): ranking %d layers by sensitivity", search.runtime,
                 best.reason, len(search.writer.nodes) - len(forced))
        ranking = _sensitivity(search, best)
        best = _restore_float(search, best, ranking, max_size_ratio, steps)
    reason = best.reason and (f"{best.reason}; no other layer kept in float helps within {max_size_ratio:.0%} "
                              f"of the FP32 size")
    return best, {"runtime": search.runtime, "split": "val", "images": search.validation.images,
                  "passed": best.passed, "reason": reason, "figures": _summary(best.figures), "steps": steps,
                  "sensitivity": ranking}


def quantize_int8(fp32_path: Path, out_path: Path, calibration: Iterable[np.ndarray],
                  validation: ValidationSet | None = None, keep_float: Iterable[str] = (), reduce_range: bool = True,
                  max_size_ratio: float = MAX_SIZE_RATIO, runtimes: Iterable[str] = ("onnxruntime",)) -> dict:
    """Write the QDQ INT8 model of ``fp32_path`` atomically to ``out_path``; return its record.

    With ``validation``: accuracy control (module docstring) on top of the layers in ``keep_float``,
    for each of ``runtimes`` (ONNX Runtime's always, written to ``out_path``); a runtime that needs
    other float layers gets its own file, ``runtime_file(out_path, runtime)``. The record's
    ``runtimes`` maps each runtime to its file (a name beside ``out_path``), float layers and accuracy
    control; its top-level ``float_nodes``, ``size_ratio`` and ``accuracy_control`` are ONNX Runtime's.
    Without ``validation``: every quantizable layer except those in ``keep_float``, one file for all.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    runtimes = ("onnxruntime", *(r for r in dict.fromkeys(runtimes) if r != "onnxruntime"))
    if validation is None:
        runtimes = ("onnxruntime",)
    with tempfile.TemporaryDirectory(prefix="pathnas-quant-") as tmp:
        writer = QdqWriter(fp32_path, calibration, Path(tmp), reduce_range)
        forced = writer.check_names(keep_float)
        files: dict = {}
        chosen = {rt: _control(_Search(writer, validation, fp32_path.stat().st_size, rt, files), forced,
                               max_size_ratio) for rt in runtimes}
        per_runtime = {}
        canonical = chosen["onnxruntime"][0]
        for runtime, (best, control) in chosen.items():
            target = out_path if best.float_nodes == canonical.float_nodes else runtime_file(out_path, runtime)
            if target != out_path or runtime == "onnxruntime":
                with atomic_path(target) as tmp_out:
                    shutil.copyfile(best.path, tmp_out)
            per_runtime[runtime] = {"file": target.name, "float_nodes": list(best.float_nodes),
                                    "size_ratio": best.size_ratio, "accuracy_control": control}
    for runtime in set(CONTROLLED_RUNTIMES) - {"onnxruntime"}:  # no stale file of an earlier run stays beside it
        own = runtime_file(out_path, runtime)
        if per_runtime.get(runtime, {}).get("file") != own.name:
            own.unlink(missing_ok=True)
    ort = per_runtime["onnxruntime"]
    return {
        "format": "QDQ", "quantized_ops": list(QUANTIZED_OPS), "activations": "int8 symmetric, per tensor",
        "weights": f"int8 per-channel symmetric, {'7-bit (reduce_range)' if reduce_range else 'full 8-bit'} range",
        "biases": "float (the runtimes fuse them into their integer kernels)",
        "calibration": "MinMax", "calibration_split": "train", "calibration_images": writer.images,
        "quantizable_nodes": len(writer.nodes), "float_nodes": ort["float_nodes"],
        "forced_float_nodes": forced, "size_ratio": ort["size_ratio"], "max_size_ratio": max_size_ratio,
        "source": str(fp32_path), "accuracy_control": ort["accuracy_control"], "runtimes": per_runtime,
    }


def _sensitivity(search: _Search, full: _Candidate) -> list[dict]:
    """Each quantized layer's share of the error: how much the logits' relative error falls when
    that layer alone goes back to float (every other layer stays as in ``full``)."""
    ranking = []
    base = full.figures["relative_error"]
    for node in search.writer.nodes:
        if node.name in full.float_nodes:
            continue
        c = search.get((*full.float_nodes, node.name))
        ranking.append({"node": node.name, "op_type": node.op_type, "weights": node.weights,
                        "error_reduction": base - c.figures["relative_error"],
                        "agreement_if_float_pct": c.figures["top1_agreement_pct"], "size_ratio": round(c.size_ratio, 4)})
    ranking.sort(key=lambda r: -r["error_reduction"])
    return ranking


def _restore_float(search: _Search, best: _Candidate, ranking: list[dict], max_size_ratio: float,
                   steps: list[dict]) -> _Candidate:
    """Put layers back in float, most sensitive first, until the model passes (or nothing helps)."""
    for entry in ranking:
        if best.passed or entry["error_reduction"] <= 0:
            break
        trial = search.get((*best.float_nodes, entry["node"]))
        if trial.size_ratio > max_size_ratio:
            steps.append(_step(trial, f"skipped: the file would be over {max_size_ratio:.0%} of FP32", entry["node"]))
            continue
        best = trial
        steps.append(_step(best, "keep float", entry["node"]))
    return best


def quantize_run(fp32_path: Path, quant_dir: Path, loaders, calibration: CalibrationSettings = CalibrationSettings(),
                 threads: int | None = None) -> dict:
    """The INT8 step of a run, the one place it happens: ``quantize_int8`` of ``fp32_path`` calibrated on
    ``loaders.calib`` (TRAIN images) and, with accuracy control, judged on ``loaders.val`` (a pathnas.data
    DataBundle) in every controlled runtime installed here. Writes ``quant_dir``/INT8_ONNX (and a
    runtime's own file where it needs other float layers) and ``quant_dir``/CALIBRATION_RECORD, the
    record it returns."""
    quant_dir = Path(quant_dir)
    validation = (ValidationSet.from_loader(fp32_path, loaders.val, loaders.task, loaders.num_classes, threads=threads)
                  if calibration.accuracy_control else None)
    info = quantize_int8(fp32_path, quant_dir / INT8_ONNX,
                         calibration_batches(loaders.calib, calibration.calibration_images), validation,
                         calibration.keep_float, calibration.reduce_range, runtimes=controlled_runtimes())
    write_json_atomic(quant_dir / CALIBRATION_RECORD, info)
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


