"""Timing protocol, per-device latency tables, the latency predictor, regression checks."""
