"""PyTorch -> ONNX: the dynamo exporter first, the legacy TorchScript exporter as fallback.

One canonical FP32 file per model: a pinned opset, a dynamic batch axis only (height
and width stay at the searched resolution), an IR version the installed ONNX Runtime
accepts, a full ``onnx.checker`` pass, and metadata in the model's metadata properties.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from pathnas.io import atomic_path

log = logging.getLogger("pathnas.export")

OPSET = 18
# onnxruntime 1.18+ reads IR version 10; newer exporters may stamp a higher one it rejects.
MAX_IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "output"


class ExportError(RuntimeError):
    """Neither exporter could turn the model into a valid ONNX file."""


def _dynamo_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model, (example,), dynamo=True, verbose=False, opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},), external_data=False, optimize=True,
    )
    program.save(str(path), external_data=False)


def _legacy_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(
        model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )


_EXPORTERS = {"dynamo": _dynamo_export, "legacy": _legacy_export}


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    exporters: tuple[str, ...] = ("dynamo", "legacy"),
) -> dict:
    """Export ``model`` (put in eval mode) to ``path`` atomically; returns which exporter was used.

    ``input_shape`` is the NCHW (or N...) shape at batch 1; the batch axis is made dynamic.
    ``exporters`` is the order to try. Latency tables export with the default too: the two
    exporters give different graphs of one subnet, and a table must time the graph that ships.
    """
    path = Path(path)
    model = model.eval()
    example = torch.zeros(*input_shape)
    errors = []
    with atomic_path(path) as tmp:
        for name in exporters:
            exporter = _EXPORTERS[name]
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    exporter(model, example, tmp, opset)
                proto = onnx.load(str(tmp))
                for node in proto.graph.node:
                    # The dynamo exporter annotates every node with stack traces and module paths:
                    # debug data that leaks source paths and is ~6% of the file (more of a QDQ model).
                    del node.metadata_props[:]
                    node.doc_string = ""
                if proto.ir_version > MAX_IR_VERSION:
                    proto.ir_version = MAX_IR_VERSION
                for key, value in (metadata or {}).items():
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = key, str(value)
                onnx.checker.check_model(proto, full_check=True)
                onnx.save(proto, str(tmp))
                exporter_used = name
                break
            except Exception as err:  # each exporter fails in its own ways; keep both messages
                errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                log.debug("ONNX %s exporter failed", name, exc_info=True)
        else:
            raise ExportError(f"could not export {type(model).__name__} to ONNX:\n  " + "\n  ".join(errors))
    if errors:
        log.warning("ONNX exporter %s", "; ".join(errors) + f"; used the {exporter_used} exporter")
    return {"path": str(path), "exporter": exporter_used, "opset": opset, "input_shape": list(input_shape)}
