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
from pathnas.data.folders import MARKER_FILE
from pathnas.data.shards import PACK_INDEX
from pathnas.deploy.html import REPORT_FILE as REPORT_HTML
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


class _InRun:
    """A path of the run, ``parts`` joined under its root, declared once as a class attribute."""

    def __init__(self, *parts: str):
        self.parts, self.__doc__ = parts, "RUN/" + "/".join(parts)

    def __get__(self, layout: "RunLayout | None", owner=None):
        return self if layout is None else layout.root.joinpath(*self.parts)


def _folder(name: str, *files: str) -> tuple[_InRun, ...]:
    """A folder of the run and the files in it."""
    return (_InRun(name), *(_InRun(name, f) for f in files))


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def relative(self, path: Path) -> str:
        """``path`` as recorded inside the run: relative to the root where it lies inside it."""
        path = Path(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def model_for_export(self) -> Path:
        """The retrained model if there is one, else the extracted one."""
        return self.retrained if self.retrained.exists() else self.subnet

    # The pipeline's own files (the lock, RUN/.lock, is pathnas.lock.RunLock's).
    stages, summary, smoke_test = _InRun(STAGES_FILE), _InRun(PIPELINE_SUMMARY), _InRun(SMOKE_TEST_FILE)
    report_html = _InRun(REPORT_HTML)  # the run's report for people (pathnas.pipeline.report)
    # The embedded synthetic data set, when the pipeline generates one; its marker is written last.
    data, data_marker = _folder("data", MARKER_FILE)
    # The tiles cut from --slides by their --annotations (pathnas.data.tiling); their marker is written last.
    tiles, tiles_marker = _folder("tiles", MARKER_FILE)
    # The data set decoded once for the training stages (pathnas.data.shards); its index is written last.
    pack, pack_index = _folder("pack", PACK_INDEX)
    supernet_dir, supernet = _folder("supernet", LAST_CHECKPOINT)
    (latency_dir,) = _folder("latency")
    search_dir, search_summary, evaluations = _folder("search", SEARCH_SUMMARY, EVALUATIONS_FILE)
    _extract_dir, subnet = _folder("extract", SUBNET_FILE)
    retrain_dir, retrained, retrain_summary = _folder("retrain", BEST_CHECKPOINT, RETRAIN_SUMMARY)
    export_dir, onnx, export_record, preprocess, labels = _folder("export", MODEL_ONNX, EXPORT_RECORD, PREPROCESS,
                                                                  LABELS)
    quantize_dir, int8_onnx, calibration_record = _folder("quantize", INT8_ONNX, CALIBRATION_RECORD)
    validate_dir, report, report_markdown = _folder("validate", REPORT_JSON, REPORT_MD)
    (bundle,) = _folder("bundle")
