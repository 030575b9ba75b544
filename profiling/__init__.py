"""Per-device latency tables (measuring them, calibrating them), the latency predictor, hardware profiles.

Light to import: torch, onnxruntime and openvino load only when something is measured. The
timing protocol and the runners it uses live in the torch-free runtime, ``pathnas.deploy``.
"""
from .predictor import LatencyPredictor, RooflinePredictor, TablePredictor, UnknownShapeError, predictor_for
from .profiles import HardwareProfile, ProfileError, UnknownDeviceError, list_profiles, load_profile
from .measure import assemble_table, measure_table
from .tables import NoLatencyTableError, load_table, save_table

__all__ = [
    "LatencyPredictor", "RooflinePredictor", "TablePredictor", "UnknownShapeError", "predictor_for",
    "HardwareProfile", "ProfileError", "UnknownDeviceError", "list_profiles", "load_profile",
    "NoLatencyTableError", "load_table", "measure_table", "save_table", "assemble_table",
]
