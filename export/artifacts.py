"""Every requested format x precision as an artifact of the run directory.

Each artifact is a row of RUN/export/export.json: exported (with its path), skipped (with the
reason: TensorRT absent, a precision this CPU has no kernels for) or failed (with the error).
The canonical FP32 ONNX file is the source of every other artifact.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pathnas.errors import ConfigError
from pathnas.io import write_json_atomic

log = logging.getLogger("pathnas.export")

FORMATS = ("onnx", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
BACKEND = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
CPU_FP16 = ("skipped: FP16 is a GPU precision here; this CPU has no native FP16 kernels, so {runtime} would not "
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


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise ConfigError(f"{what} {text!r}: allowed values are {', '.join(allowed)} (comma-separated)")
    return items


def export_artifacts(root: Path, export_dir: Path, quant_dir: Path, model, meta: dict, loaders,
                     formats: list[str], precisions: list[str], calibration_images: int = 512,
                     dataset: dict | None = None) -> list[dict]:
    """Write the artifacts under ``export_dir`` (INT8 under ``quant_dir``) and ``export_dir/export.json``,
    whose paths are relative to ``root`` (the run directory); returns its rows.

    ``loaders`` is the data set's pathnas.data DataBundle: INT8 is calibrated on its TRAIN images
    and its accuracy controlled on VAL (export/quantize.py)."""
    import onnx
    import onnxruntime
    import torch

    from pathnas.onnx import export_onnx

    from .openvino_export import export_openvino
    from .quantize import quantize_with_data, write_calibration_record
    from .tensorrt_export import Unavailable, build_engine

    root, export_dir, quant_dir = Path(root), Path(export_dir), Path(quant_dir)
    size = meta["space_config"]["input_size"]
    shape = (1, meta["space_config"].get("in_chans", 3), size, size)
    preprocess = preprocess_spec(size, dataset)
    onnx_path = export_dir / "model.onnx"
    info = export_onnx(model.eval(), onnx_path, shape, metadata={
        "pathnas.arch": meta["arch"], "pathnas.space": meta["space_config"]["space"], "pathnas.task": meta["task"],
        "pathnas.classes": json.dumps(meta["classes"]), "pathnas.preprocess": json.dumps(preprocess),
        "pathnas.versions": json.dumps({"torch": torch.__version__, "onnx": onnx.__version__,
                                        "onnxruntime": onnxruntime.__version__}),
    })
    write_json_atomic(export_dir / "preprocess.json", preprocess)
    write_json_atomic(export_dir / "labels.json", meta["classes"])
    rel = lambda p: str(Path(p).relative_to(root))  # noqa: E731
    rows: list[dict] = []
    int8_path = quant_dir / "model_int8.onnx"
    float_nodes = None  # the layers accuracy control kept in float: every INT8 artifact says which
    if "int8" in precisions:
        qinfo = quantize_with_data(onnx_path, int8_path, loaders, calibration_images)
        write_calibration_record(quant_dir / "calibration.json", qinfo)
        float_nodes = qinfo["float_nodes"]

    def add(fmt: str, precision: str, make) -> None:
        row = {"format": fmt, "backend": BACKEND[fmt], "precision": precision, "path": None, "status": "exported",
               "reason": None, **({"float_nodes": float_nodes} if precision == "int8" else {})}
        try:
            row["path"] = rel(make())
        except Unavailable as err:
            row.update(status="skipped", reason=str(err))
        except _Skip as skip:
            row.update(status="skipped", reason=str(skip))
        except Exception as err:  # one broken format must not hide the others
            log.exception("export %s %s failed", fmt, precision)
            row.update(status="failed", reason=f"{type(err).__name__}: {err}")
        rows.append(row)

    for fmt in formats:
        for precision in precisions:
            if fmt == "onnx":
                add(fmt, precision, {"fp32": lambda: onnx_path, "int8": lambda: int8_path,
                                     "fp16": _skip(CPU_FP16.format(runtime="ONNX Runtime's CPU provider"))}[precision])
            elif fmt == "openvino":
                add(fmt, precision, {
                    "fp32": lambda: export_openvino(onnx_path, export_dir / "openvino" / "model.xml"),
                    "int8": lambda: export_openvino(int8_path, export_dir / "openvino_int8" / "model.xml"),
                    "fp16": _skip(CPU_FP16.format(runtime="OpenVINO's CPU plugin")),
                }[precision])
            else:
                source = int8_path if precision == "int8" else onnx_path
                add(fmt, precision, lambda s=source, p=precision: build_engine(s, export_dir / "tensorrt", shape, p))
    write_json_atomic(export_dir / "export.json", {"onnx": {**info, "path": rel(onnx_path)}, "artifacts": rows,
                                                   "preprocess": preprocess, "arch": meta["arch"],
                                                   "task": meta["task"], "dataset": dataset})
    return rows


class _Skip(Exception):
    pass


def _skip(reason: str):
    def raise_skip():
        raise _Skip(reason.removeprefix("skipped: "))

    return raise_skip
