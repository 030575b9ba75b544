"""What the search needs from a latency source: one interface, built by the search's caller.

The search never decides where latency comes from (a table measured on the device, a
labelled roofline estimate, a benchmark's column); it is handed a ``LatencyModel``, so it
does not import the profiling package and a new source needs no change here.
"""
from __future__ import annotations

from typing import Callable, Protocol


class LatencyModel(Protocol):
    source: str  # e.g. "measured-table", "roofline-estimate"
    is_estimate: bool  # estimates are labelled so wherever they are shown

    def predict_ms(self, arch) -> float:
        """Latency of the architecture on the target device, ms per image at the device's batch size."""

    def measure_ms(self, arch) -> float | None:
        """The architecture timed on this machine, or None when this machine is not the device."""

    def label(self, latency_ms: float) -> str:
        """The figure as people should read it (estimates say so)."""

    def describe(self) -> dict:
        """At least device, runtime, precision, batch_size, source and is_estimate, for prompts and summaries."""


# The caller's factory: the search builds its supernet first, then asks for its latency model.
LatencyFactory = Callable[[object], LatencyModel]
