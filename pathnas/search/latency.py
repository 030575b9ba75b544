"""What the search needs from a latency source: one interface, built by the search's caller.

The search never decides where latency comes from (a table measured on the device, a
labelled roofline estimate, a tabular benchmark's measured column); it is handed a
``LatencyModel``, so it does not import the profiling package and a new source needs no
change here. The search writes the figures itself (``figures.ms``: significant digits, and
estimates say so).
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

    def describe(self) -> dict:
        """At least device, runtime, precision, batch_size, source and is_estimate, for prompts and summaries;
        ``note`` (optional) says in a sentence where the figures come from."""


# The caller's factory: the search builds what it searches first (a supernet, or a benchmark
# table for a tabular space), then asks for the latency model of that.
LatencyFactory = Callable[[object], LatencyModel]


def source_note(model: LatencyModel) -> str:
    """Where the latency figures come from, in a sentence for people and LLM prompts."""
    if model.is_estimate:
        return "ROOFLINE ESTIMATES from published peak compute and bandwidth, not measurements."
    return model.describe().get("note") or "predicted from a latency table measured on the device."
