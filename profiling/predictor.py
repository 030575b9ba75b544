"""The latency predictor the search calls: an architecture in, milliseconds on the device out.

Two sources, never mixed: a table measured on the device (``measured-table``), or, only when
asked for, a roofline estimate from the profile's published peak compute and bandwidth
(``roofline-estimate``), which is labelled an estimate wherever it appears. When the device
is this machine, ``measure_ms`` also times the path here, so a search can show both.

The predictors implement ``pathnas.search.LatencyModel``; the search receives one from its
caller and never imports this package.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pathnas.errors import ConfigError, InvalidFileError, UserError

from .profiles import HardwareProfile
from .commands import missing_table_error, profile_command
from .tables import find_table, load_table, table_filename

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}


class UnknownShapeError(UserError):
    """The table has no measurement for a part (module at an exact input shape) of this supernet."""


class LatencyPredictor:
    source: str
    is_estimate: bool

    def __init__(self, profile: HardwareProfile, supernet, measure_here: bool = False):
        self.profile = profile
        self.supernet = supernet
        self._parts = supernet.latency_parts()
        # Timing a path here is only meaningful when this machine is the device.
        self.measures_here = measure_here and profile.matches_here()

    def predict_ms(self, arch) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure_ms(self, arch, rounds: int = 1) -> float | None:
        """The path's latency timed on this machine now, or None when this machine is not the device.

        Timed exactly as a table's paths are (``measure.time_items``: exported, then ``rounds`` rounds each
        in a fresh process that does nothing else), so a figure compares like with like. Timed in this
        process, a path ran beside whatever the search had just done: right after pretraining, torch's
        threads competed with it and a good table read 2.3x off."""
        if not self.measures_here:
            return None
        from .measure import time_items
        from .pack import net_items

        _, timings = time_items(self.profile, self.supernet, net_items(self.supernet, [arch], lambda j: "probe"),
                                rounds)
        return timings["results"][f"net:{arch.code}"]["median_ms"]

    def label(self, latency_ms: float) -> str:
        """The figure as it should be shown: estimates say so."""
        figure = f"{latency_ms:.3g}"  # significant digits: 0.0099 and 0.0096 ms stay apart
        return f"~{figure} ms (roofline estimate)" if self.is_estimate else f"{figure} ms"

    def describe(self) -> dict:
        return {"device": self.profile.name, "runtime": self.profile.runtime, "precision": self.profile.precision,
                "batch_size": self.profile.batch_size, "source": self.source, "is_estimate": self.is_estimate}


class TablePredictor(LatencyPredictor):
    """Sum of the measured parts a path selects, through the fitted overhead model; times ``anchor`` when a
    search was asked to re-anchor the table (``probe.reanchor``: the reference's time now / then). It
    predicts only: checking a table against the machine is ``probe``'s job, refitting one ``calibrate``'s."""

    source = "measured-table"
    is_estimate = False

    def __init__(self, profile: HardwareProfile, supernet, table: dict, table_path: Path | None = None,
                 measure_here: bool = False):
        super().__init__(profile, supernet, measure_here)
        if table["profile"] != profile.name:
            raise InvalidFileError(f"{table_path}: table was measured for device {table['profile']}, not {profile.name}")
        self.table, self.table_path = table, table_path
        self.note: str | None = None  # where the figures come from, when it is more than "a table"
        self.anchor: dict | None = None  # {"factor", ...} once a search re-anchored the table (recorded in its run)
        self._scale = table["overhead"]["scale"]
        self._offset = table["overhead"]["offset_ms"]
        # Checked once, here, for every part the space can select: a search must not stop at
        # its seventh candidate, and a missing part must never count as zero.
        missing = sorted({p.key for p in self._parts if p.key not in table["parts"]})
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            config = supernet.config.model_dump(mode="json")
            raise UnknownShapeError(
                f"latency table {table_path or ''} has no measurement for {shown}: it was measured for another "
                f"{config['space']} configuration. Measure this one on the device:\n  "
                f"{profile_command(profile, config, table_filename(config))}"
            )

    def parts_sum_ms(self, arch) -> float:
        return sum(self.table["parts"][p.key]["median_ms"] for p in self.supernet.parts_for(arch, self._parts))

    def table_ms(self, arch) -> float:
        """The table's prediction as measured (no anchor)."""
        return self._scale * self.parts_sum_ms(arch) + self._offset

    def predict_ms(self, arch) -> float:
        return self.table_ms(arch) * (self.anchor["factor"] if self.anchor else 1.0)

    def use_anchor(self, anchor: dict | None) -> None:
        """Predict the table's figures times ``anchor["factor"]`` from now on, and say so wherever the
        figures are shown ("table of DATE × 1.07 by the reference"); None or a factor of 1 changes nothing."""
        if not anchor or anchor.get("factor") in (None, 1.0):
            self.anchor = None
            return
        self.anchor = anchor
        self.note = (f"predicted from a latency table measured on the device, re-anchored at the start of the search: "
                     f"{anchored_label(self.table, anchor['factor'])}.")

    def describe(self) -> dict:
        return {**super().describe(), "table": str(self.table_path) if self.table_path else None,
                "measured_on": self.table["metadata"].get("cpu_model"), "measured_at": self.table["metadata"].get("date"),
                "metadata": self.table["metadata"], "overhead": self.table["overhead"],
                "holdout_accuracy": self.table.get("accuracy"), "table_anchor": self.table.get("anchor"),
                **({"anchor": self.anchor} if self.anchor else {}), **({"note": self.note} if self.note else {})}


def anchored_label(table: dict, factor: float) -> str:
    """How a re-anchored table is named to people and prompts: "table of 2026-12-05 × 1.07 by the reference"."""
    date = str(table["metadata"].get("date") or "an unknown date")[:10]
    return f"table of {date} × {factor:.2f} by the reference"


class RooflinePredictor(LatencyPredictor):
    """Per part: max(compute time at peak, memory time at peak bandwidth). An estimate, not a measurement."""

    source = "roofline-estimate"
    is_estimate = True

    def __init__(self, profile: HardwareProfile, supernet, measure_here: bool = False):
        if not (profile.peak_gflops and profile.memory_bandwidth_gbs):
            raise ConfigError(
                f"device {profile.name} publishes no peak_gflops / memory_bandwidth_gbs in its profile, "
                f"so not even a roofline estimate is possible; measure it with pathnas-edge profile"
            )
        super().__init__(profile, supernet, measure_here)
        self._cache: dict[str, float] = {}

    def _part_ms(self, part) -> float:
        if part.key not in self._cache:
            import torch

            from pathnas.cost import measure_cost

            module = part.build().eval()
            with torch.no_grad():
                out = module(torch.zeros(part.input_shape))
            cost = measure_cost(module, part.input_shape)
            values = cost.params + torch.Size(part.input_shape).numel() + out.numel()
            compute_s = 2 * cost.flops / (self.profile.peak_gflops * 1e9)  # fvcore counts multiply-adds
            memory_s = values * BYTES_PER_VALUE[self.profile.precision] / (self.profile.memory_bandwidth_gbs * 1e9)
            self._cache[part.key] = 1e3 * max(compute_s, memory_s)
        return self._cache[part.key]

    def predict_ms(self, arch) -> float:
        return sum(self._part_ms(p) for p in self.supernet.parts_for(arch, self._parts))

    def describe(self) -> dict:
        return {**super().describe(), "peak_gflops": self.profile.peak_gflops,
                "memory_bandwidth_gbs": self.profile.memory_bandwidth_gbs,
                "note": "roofline estimate from published peaks; not measured on the device"}


def predictor_for(
    profile: HardwareProfile,
    supernet,
    latency_source: Literal["table", "roofline"] = "table",
    table_path: str | Path | None = None,
    measure_here: bool = False,
) -> LatencyPredictor:
    """The predictor for a device and a supernet configuration.

    ``table`` (the default) needs a table measured on the device; without one it raises
    NoLatencyTableError saying which command to run there and where to put the file.
    ``measure_here``: also time each path on this machine when it is the device.
    """
    if latency_source == "roofline":
        return RooflinePredictor(profile, supernet, measure_here)
    if latency_source != "table":
        raise ConfigError(f"latency source {latency_source!r}: allowed values are table, roofline")
    config = supernet.config.model_dump(mode="json")
    path = find_table(profile, config, table_path)
    if path is None:
        raise missing_table_error(profile, config)
    return TablePredictor(profile, supernet, load_table(path), path, measure_here)
