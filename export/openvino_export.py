"""ONNX -> OpenVINO IR, keeping FP32 weights FP32 (save_model compresses to FP16 by default)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def export_openvino(onnx_path: Path, xml_path: Path) -> Path:
    """Convert with ``openvino.convert_model`` and save without FP16 compression.

    A QDQ (INT8) ONNX model converts to an IR whose FakeQuantize nodes OpenVINO runs in INT8.
    The IR is two files: both are saved in a temporary folder beside the target and moved in,
    the .xml last, so a half-written IR never looks complete.
    """
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=xml_path.parent) as tmp:
        tmp_xml = Path(tmp) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)
    return xml_path
