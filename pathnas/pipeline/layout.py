"""The run directory: every path of a run, assembled in one place.

Each layer names the files it writes (a training checkpoint, the search's summary, the exported
model...) and exports that name; this class places them in the run's folders and names the
pipeline's own files. Stages exchange nothing but these files, so a stage can be run alone,
re-run or resumed, and a person can read what happened. Paths recorded inside a run
(stages.json, export.json, the validation report) are relative to its root, so a moved run
directory stays valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pathnas.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT
from pathnas.data.datasets import MARKER_FILE
from pathnas.export.artifacts import EXPORT_RECORD, LABELS, MODEL_ONNX, PREPROCESS
from pathnas.export.quantize import CALIBRATION_RECORD, INT8_ONNX
from pathnas.export.report import REPORT_JSON, REPORT_MD
from pathnas.retrain import SUMMARY_FILE as RETRAIN_SUMMARY
from pathnas.search.runfile import EVALUATIONS_FILE, SUMMARY_FILE as SEARCH_SUMMARY

# The pipeline's own files.
STAGES_FILE = "stages.json"  # what each stage ran with (pathnas.pipeline.record)
PIPELINE_SUMMARY = "pipeline.json"
SUBNET_FILE = "subnet.pt"
SMOKE_TEST_FILE = "smoke_test.json"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def relative(self, path: Path) -> str:
        """``path`` as recorded inside the run: relative to the root where it lies inside it."""
        path = Path(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    # -- bookkeeping (the lock, RUN/.lock, is pathnas.lock.RunLock's) ------------------------------------------------------------------------
    @property
    def stages(self) -> Path:
        return self.root / STAGES_FILE

    @property
    def summary(self) -> Path:
        return self.root / PIPELINE_SUMMARY

    # -- data and supernet --------------------------------------------------------------------
    @property
    def data(self) -> Path:
        """The embedded synthetic data set (when the pipeline generates one)."""
        return self.root / "data"

    @property
    def data_marker(self) -> Path:
        """Written last by the generator: the embedded data set is complete."""
        return self.data / MARKER_FILE

    @property
    def supernet_dir(self) -> Path:
        return self.root / "supernet"

    @property
    def supernet(self) -> Path:
        return self.supernet_dir / LAST_CHECKPOINT

    @property
    def latency_dir(self) -> Path:
        return self.root / "latency"

    # -- search and extraction ----------------------------------------------------------------
    @property
    def search_dir(self) -> Path:
        return self.root / "search"

    @property
    def search_summary(self) -> Path:
        return self.search_dir / SEARCH_SUMMARY

    @property
    def evaluations(self) -> Path:
        return self.search_dir / EVALUATIONS_FILE

    @property
    def subnet(self) -> Path:
        return self.root / "extract" / SUBNET_FILE

    @property
    def retrain_dir(self) -> Path:
        return self.root / "retrain"

    @property
    def retrained(self) -> Path:
        return self.retrain_dir / BEST_CHECKPOINT

    @property
    def retrain_summary(self) -> Path:
        return self.retrain_dir / RETRAIN_SUMMARY

    def model_for_export(self) -> Path:
        """The retrained model if there is one, else the extracted one."""
        return self.retrained if self.retrained.exists() else self.subnet

    # -- export, quantization, validation --------------------------------------------------------
    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def onnx(self) -> Path:
        return self.export_dir / MODEL_ONNX

    @property
    def export_record(self) -> Path:
        return self.export_dir / EXPORT_RECORD

    @property
    def preprocess(self) -> Path:
        return self.export_dir / PREPROCESS

    @property
    def labels(self) -> Path:
        return self.export_dir / LABELS

    @property
    def quantize_dir(self) -> Path:
        return self.root / "quantize"

    @property
    def int8_onnx(self) -> Path:
        return self.quantize_dir / INT8_ONNX

    @property
    def calibration_record(self) -> Path:
        return self.quantize_dir / CALIBRATION_RECORD

    @property
    def validate_dir(self) -> Path:
        return self.root / "validate"

    @property
    def report(self) -> Path:
        return self.validate_dir / REPORT_JSON

    @property
    def report_markdown(self) -> Path:
        return self.validate_dir / REPORT_MD

    # -- packaging ---------------------------------------------------------------------------------
    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def smoke_test(self) -> Path:
        """The torch-free runtime's outputs on a few validation images against PyTorch's (stage_smoke_test)."""
        return self.root / SMOKE_TEST_FILE
