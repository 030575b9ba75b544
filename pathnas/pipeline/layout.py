"""The run directory: every file a stage reads or writes, named in one place.

Stages exchange nothing but these files, so a stage can be run alone, re-run or resumed,
and a person can read what happened. Paths recorded inside a run (stages.json, export.json,
the validation report) are relative to its root, so a moved run directory stays valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def relative(self, path: Path) -> str:
        """``path`` as recorded inside the run: relative to the root where it lies inside it."""
        path = Path(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def summary(self) -> Path:
        return self.root / "pipeline.json"

    # -- data and supernet --------------------------------------------------------------------
    @property
    def data(self) -> Path:
        """The embedded synthetic data set (when the pipeline generates one)."""
        return self.root / "data"

    @property
    def supernet_dir(self) -> Path:
        return self.root / "supernet"

    @property
    def supernet(self) -> Path:
        return self.supernet_dir / "last.pt"

    @property
    def latency_dir(self) -> Path:
        return self.root / "latency"

    # -- search and extraction ----------------------------------------------------------------
    @property
    def search_dir(self) -> Path:
        return self.root / "search"

    @property
    def search_summary(self) -> Path:
        return self.search_dir / "summary.json"

    @property
    def evaluations(self) -> Path:
        return self.search_dir / "evaluations.jsonl"

    @property
    def subnet(self) -> Path:
        return self.root / "extract" / "subnet.pt"

    @property
    def retrain_dir(self) -> Path:
        return self.root / "retrain"

    @property
    def retrained(self) -> Path:
        return self.retrain_dir / "best.pt"

    @property
    def retrain_summary(self) -> Path:
        return self.retrain_dir / "summary.json"

    def model_for_export(self) -> Path:
        """The retrained model if there is one, else the extracted one."""
        return self.retrained if self.retrained.exists() else self.subnet

    # -- export, quantization, validation --------------------------------------------------------
    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def onnx(self) -> Path:
        return self.export_dir / "model.onnx"

    @property
    def export_record(self) -> Path:
        return self.export_dir / "export.json"

    @property
    def preprocess(self) -> Path:
        return self.export_dir / "preprocess.json"

    @property
    def labels(self) -> Path:
        return self.export_dir / "labels.json"

    @property
    def quantize_dir(self) -> Path:
        return self.root / "quantize"

    @property
    def int8_onnx(self) -> Path:
        return self.quantize_dir / "model_int8.onnx"

    @property
    def calibration_record(self) -> Path:
        return self.quantize_dir / "calibration.json"

    @property
    def validate_dir(self) -> Path:
        return self.root / "validate"

    @property
    def report(self) -> Path:
        return self.validate_dir / "report.json"

    @property
    def report_markdown(self) -> Path:
        return self.validate_dir / "report.md"

    # -- packaging ---------------------------------------------------------------------------------
    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def smoke_test(self) -> Path:
        """The torch-free runtime's outputs on a few validation images against PyTorch's (stage_smoke_test)."""
        return self.root / "smoke_test.json"
