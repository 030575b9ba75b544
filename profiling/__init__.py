"""Timing protocol, per-device latency tables, the latency predictor, regression checks.

Light to import: torch, onnxruntime and openvino load only when something is measured.
"""
from .predictor import LatencyPredictor, RooflinePredictor, TablePredictor, UnknownShapeError, predictor_for
from .profiles import HardwareProfile, ProfileError, UnknownDeviceError, list_profiles, load_profile
from .regress import BaselineMismatchError, Verdict, check_regression, compare
from .tables import NoLatencyTableError, load_table, measure_model_latency, measure_table, save_table
from .timing import TimingResult, time_callable

__all__ = [
    "LatencyPredictor", "RooflinePredictor", "TablePredictor", "UnknownShapeError", "predictor_for",
    "HardwareProfile", "ProfileError", "UnknownDeviceError", "list_profiles", "load_profile",
    "BaselineMismatchError", "Verdict", "check_regression", "compare",
    "NoLatencyTableError", "load_table", "measure_model_latency", "measure_table", "save_table",
    "TimingResult", "time_callable",
]
