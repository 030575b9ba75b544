"""Every requested format x precision as an artifact of the run directory.

Each artifact is a row of RUN/export/export.json: exported (with its path), skipped (with the
reason: TensorRT absent, a precision this CPU has no kernels for), failed (with the error) or, for
an INT8 model whose accuracy control could not pass on val, failed-validation (with the reason).
The canonical FP32 ONNX file is the source of every other artifact. Three jobs, three functions:
``export_canonical`` (the ONNX model and what describes it), ``convert_artifacts`` (format x
precision dispatch) and ``write_export_record``; the export stage (pathnas.pipeline.stages) runs
them with the quantize stage (export/quantize.py:quantize_run, the one INT8 path) between them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pathnas.deploy.runtimes import backend_of_format
from pathnas.io import write_json_atomic

log = logging.getLogger("pathnas.export")

CPU_FP16 = ("FP16 is a GPU precision here; this CPU has no native FP16 kernels, so {runtime} would not "
            "run it as FP16 (use tensorrt fp16 on the GPU/Jetson)")


def preprocess_spec(input_size: int, dataset: dict | None = None) -> dict:
    """preprocess.json: what the runtime does to pixels, and the resolution the model was trained at.

    ``mpp`` (microns per pixel of the training images, from the data set's dataset.json; None when it
    declares none) and ``image_px`` (their side before the resize) let the runtime read a slide at the
    pyramid level and tile size that show the model what it was trained on.
    """
    from pathnas.data import NORMALIZE_MEAN, NORMALIZE_STD

    dataset = dataset or {}
    return {"input_size": input_size, "mean": list(NORMALIZE_MEAN), "std": list(NORMALIZE_STD),
            "channel_order": "RGB", "layout": "NCHW", "dtype": "float32", "scale": 1 / 255,
            "resize": "bilinear (antialiased) of the whole image to input_size x input_size",
            "formula": "(pixel * scale - mean) / std per channel",
            "mpp": dataset.get("mpp"), "image_px": dataset.get("image_size")}


# The files this module writes into RUN/export (pathnas.pipeline.layout names them from here).
MODEL_ONNX = "model.onnx"  # the canonical FP32 model, source of every other artifact
EXPORT_RECORD = "export.json"
PREPROCESS = "preprocess.json"
LABELS = "labels.json"
OPENVINO_IR = {"fp32": "openvino/model.xml", "int8": "openvino_int8/model.xml"}  # each with its .bin beside it
TENSORRT_DIR = "tensorrt"  # engines, named by their cache key (export/tensorrt_export.py)


def export_canonical(export_dir: Path, model, meta: dict, dataset: dict | None = None) -> dict:
    """The canonical FP32 ONNX model with its metadata, preprocess.json and labels.json under
    ``export_dir``; returns what export.json says of them (``write_export_record``)."""
    import onnx
    import onnxruntime
    import torch

    from pathnas.onnx import export_onnx

    export_dir = Path(export_dir)
    preprocess = preprocess_spec(meta["space_config"]["input_size"], dataset)
    info = export_onnx(model.eval(), export_dir / MODEL_ONNX, input_shape(meta), metadata={
        "pathnas.arch": meta["arch"], "pathnas.space": meta["space_config"]["space"], "pathnas.task": meta["task"],
        "pathnas.classes": json.dumps(meta["classes"]), "pathnas.preprocess": json.dumps(preprocess),
        "pathnas.versions": json.dumps({"torch": torch.__version__, "onnx": onnx.__version__,
                                        "onnxruntime": onnxruntime.__version__}),
    })
    write_json_atomic(export_dir / PREPROCESS, preprocess)
    write_json_atomic(export_dir / LABELS, meta["classes"])
    return {"onnx": info, "preprocess": preprocess, "arch": meta["arch"], "task": meta["task"], "dataset": dataset}


def input_shape(meta: dict) -> tuple[int, ...]:
    """The model's input at batch 1 (NCHW), from a subnet's metadata."""
    size = meta["space_config"]["input_size"]
    return (1, meta["space_config"].get("in_chans", 3), size, size)


def convert_artifacts(export_dir: Path, quant_dir: Path, formats: list[str], precisions: list[str],
                      shape: tuple[int, ...], int8: dict | None = None) -> list[dict]:
    """Every format x precision from the canonical ONNX model (and, for INT8, the calibration record
    ``int8`` of export/quantize.py with its files in ``quant_dir``): one row each, paths absolute.

    An INT8 row comes from its runtime's own QDQ file and names its float layers; one whose accuracy
    control could not pass on val is ``failed-validation`` with that reason, so it is never packaged."""
    from .tensorrt_export import Unavailable

    export_dir, quant_dir = Path(export_dir), Path(quant_dir)
    onnx_path = export_dir / MODEL_ONNX
    if "int8" in precisions and int8 is None:
        raise ValueError("INT8 artifacts need the calibration record of export/quantize.py:quantize_run")
    rows: list[dict] = []

    def add(fmt: str, precision: str) -> None:
        backend = backend_of_format(fmt)
        row = {"format": fmt, "backend": backend.name, "precision": precision, "path": None, "status": "exported",
               "reason": None}
        own = int8_entry(int8, backend.name) if precision == "int8" else {}
        if precision == "int8":
            row["float_nodes"] = own["float_nodes"]
        try:
            if precision not in backend.precisions:
                raise _Skip(CPU_FP16.format(runtime=backend.title) if precision == "fp16" else
                            f"{backend.title} ships {', '.join(backend.precisions)}")
            row["path"] = str(EXPORTERS[fmt](sources, precision))
        except Unavailable as err:
            row.update(status="skipped", reason=str(err))
        except _Skip as skip:
            row.update(status="skipped", reason=str(skip))
        except Exception as err:  # one broken format must not hide the others
            log.exception("export %s %s failed", fmt, precision)
            row.update(status="failed", reason=f"{type(err).__name__}: {err}")
        control = own.get("accuracy_control")
        if row["status"] == "exported" and control and not control["passed"]:
            row.update(status="failed-validation", reason=f"INT8 accuracy control for {control['runtime']} on val: "
                                                          f"{control['reason']}")
        rows.append(row)

    sources = Sources(export_dir, onnx_path, quant_dir, int8, tuple(shape))
    for fmt in formats:
        for precision in precisions:
            add(fmt, precision)
    return rows


@dataclass(frozen=True)
class Sources:
    """What an export function makes its artifact from."""

    export_dir: Path
    onnx: Path  # the canonical FP32 model
    quant_dir: Path
    int8: dict | None  # export/quantize.py's calibration record (INT8 artifacts only)
    shape: tuple[int, ...]  # the input at batch 1

    def int8_onnx(self, backend: str) -> Path:
        """The backend's own INT8 Q/DQ file (export/quantize.py)."""
        return self.quant_dir / int8_entry(self.int8, backend)["file"]


# One export function per format (deploy/runtimes.py's backends name them): (sources, precision) -> the
# artifact's path. A precision the backend does not ship never reaches it (``convert_artifacts`` skips it).
def export_onnx_artifact(src: Sources, precision: str) -> Path:
    return src.int8_onnx("onnxruntime") if precision == "int8" else src.onnx


def export_openvino_artifact(src: Sources, precision: str) -> Path:
    from .openvino_export import export_openvino

    source = src.int8_onnx("openvino") if precision == "int8" else src.onnx
    return export_openvino(source, src.export_dir / OPENVINO_IR[precision])


def export_tensorrt_artifact(src: Sources, precision: str) -> Path:
    from .tensorrt_export import build_engine

    source = src.int8_onnx("tensorrt") if precision == "int8" else src.onnx
    return build_engine(source, src.export_dir / TENSORRT_DIR, src.shape, precision)


EXPORTERS = {"onnx": export_onnx_artifact, "openvino": export_openvino_artifact, "tensorrt": export_tensorrt_artifact}


def int8_entry(record: dict, backend: str) -> dict:
    """A runtime's INT8 file, float layers and accuracy control in a calibration record; a runtime not
    controlled here (TensorRT, judged on its GPU by `validate`) runs ONNX Runtime's file."""
    from .quantize import INT8_ONNX

    runtimes = record.get("runtimes") or {}
    if backend in runtimes:
        return runtimes[backend]
    return {"file": INT8_ONNX, "float_nodes": record["float_nodes"], "accuracy_control": None}


def write_export_record(root: Path, export_dir: Path, canonical: dict, rows: list[dict]) -> list[dict]:
    """``export_dir``/export.json: ``canonical`` (``export_canonical``'s) and the artifact rows, with
    every path relative to ``root`` (the run directory, so a moved run stays valid); returns the rows."""
    root = Path(root)
    rel = lambda p: None if p is None else str(Path(p).relative_to(root))  # noqa: E731
    rows = [{**r, "path": rel(r["path"])} for r in rows]
    write_json_atomic(Path(export_dir) / EXPORT_RECORD, {
        **canonical, "onnx": {**canonical["onnx"], "path": rel(Path(export_dir) / MODEL_ONNX)}, "artifacts": rows})
    return rows


class _Skip(Exception):
    """A format x precision this export does not make here; the row says why."""
