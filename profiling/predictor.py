"""The latency predictor the search calls: an architecture in, milliseconds on the device out.

Two sources, never mixed: a table measured on the device (``measured-table``), or, only when
asked for, a roofline estimate from the profile's published peak compute and bandwidth
(``roofline-estimate``), which is labelled an estimate wherever it appears. When the device
is this machine, ``measure_ms`` also times the path here, so a search can show both.

The predictors implement ``pathnas.search.LatencyModel``; the search receives one from its
caller and never imports this package.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pathnas.errors import ConfigError, InvalidFileError, UserError

from .profiles import HardwareProfile
from .commands import calibrate_command, missing_table_error, profile_command
from .tables import find_table, load_table, table_filename

log = logging.getLogger("pathnas.profiling")

BYTES_PER_VALUE = {"fp32": 4, "fp16": 2, "int8": 1}
# The drift check warns when a probe path's time here is off the table's prediction by more than this.
DRIFT_THRESHOLD = 0.15
PROBE_ROUNDS = 3
# Paths timed when a drifted table is recalibrated at the start of a search on the device itself.
AUTO_CALIBRATION_SUBNETS = 8


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
        self.measures_here = measure_here and profile.runs_here()

    def predict_ms(self, arch) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure_ms(self, arch, rounds: int = 1) -> float | None:
        """The path's latency timed on this machine now, or None when this machine is not the device.

        Timed exactly as a table's paths are (``measure.time_items``: exported, then ``rounds`` rounds each
        in a fresh process that does nothing else), so a probe compares like with like. Timed in this
        process, a path ran beside whatever the search had just done: right after pretraining, torch's
        threads competed with it and a probe found a good table 2.3x off."""
        if not self.measures_here:
            return None
        from .measure import time_items
        from .pack import net_items

        _, timings = time_items(self.profile, self.supernet, net_items(self.supernet, [arch], lambda j: "probe"),
                                rounds)
        return timings["results"][f"net:{arch.code}"]["median_ms"]

    def checked_here(self) -> "LatencyPredictor":
        """Check the predictions against this machine where that means something (see
        TablePredictor.check_drift); returns the predictor, so a caller can chain it."""
        self.check_drift()
        return self

    def check_drift(self, threshold: float = DRIFT_THRESHOLD, measure=None) -> dict | None:
        """Nothing to check for an estimate; a measured table overrides this."""
        return None

    def label(self, latency_ms: float) -> str:
        """The figure as it should be shown: estimates say so."""
        figure = f"{latency_ms:.3g}"  # significant digits: 0.0099 and 0.0096 ms stay apart
        return f"~{figure} ms (roofline estimate)" if self.is_estimate else f"{figure} ms"

    def describe(self) -> dict:
        return {"device": self.profile.name, "runtime": self.profile.runtime, "precision": self.profile.precision,
                "batch_size": self.profile.batch_size, "source": self.source, "is_estimate": self.is_estimate}


class TablePredictor(LatencyPredictor):
    """Sum of the measured parts a path selects, through the fitted overhead model."""

    source = "measured-table"
    is_estimate = False

    def __init__(self, profile: HardwareProfile, supernet, table: dict, table_path: Path | None = None,
                 measure_here: bool = False):
        super().__init__(profile, supernet, measure_here)
        if table["profile"] != profile.name:
            raise InvalidFileError(f"{table_path}: table was measured for device {table['profile']}, not {profile.name}")
        self.table, self.table_path = table, table_path
        self.note: str | None = None  # where the figures come from, when it is more than "a table"
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

    def predict_ms(self, arch) -> float:
        return self._scale * self.parts_sum_ms(arch) + self._offset

    def probe_arch(self):
        """The path the drift check times: a fixed random one, if possible one the table did not measure
        end to end (a tiny space may have no other)."""
        from .calibrate import CALIBRATION_SEED
        from .pack import sample_archs

        measured = {r["arch"] for r in self.table.get("end_to_end", [])}
        try:
            return sample_archs(self.supernet, 1, CALIBRATION_SEED + 1, measured)[0]
        except ConfigError:
            return sample_archs(self.supernet, 1, CALIBRATION_SEED + 1)[0]

    def check_drift(self, threshold: float = DRIFT_THRESHOLD, measure=None) -> dict | None:
        """When this machine is the device (and timing here is on), time one probe path now and
        warn, naming the calibrate command, when the table's prediction is off by more than
        ``threshold``. ``measure(arch) -> ms`` replaces the timing (tests give samples).
        Returns the probe's figures, or None when nothing was timed."""
        if not self.measures_here and measure is None:
            return None
        arch = self.probe_arch()
        # As many rounds as a table pools, so that the probe is timed as the table was.
        measured = measure(arch) if measure else self.measure_ms(arch, rounds=PROBE_ROUNDS)
        if measured is None:
            return None
        predicted = self.predict_ms(arch)
        probe = {"arch": arch.code, "measured_ms": measured, "predicted_ms": predicted, "ratio": measured / predicted,
                 "drifted": abs(measured / predicted - 1) > threshold}
        if probe["drifted"] and measure is None:
            # This machine is the device: calibrate now from a few probes (as `profile calibrate` does)
            # rather than only warn, and keep the result in the user's table folder.
            probe["calibration"] = self.recalibrate_here(probe)
        elif probe["drifted"]:
            config = self.supernet.config.model_dump(mode="json")
            out = f"{self.profile.name}-{table_filename(config)}".replace(".json", "-calibrated.json")
            log.warning(
                "latency table %s is off on this machine now: probe path %s timed %.3f ms, predicted %.3f ms "
                "(%.2fx, more than ±%.0f%%). Recalibrate it (it times 8 paths), then search with --latency-table %s:\n  %s",
                self.table_path or "(in memory)", arch.code, measured, predicted, probe["ratio"], 100 * threshold,
                out, calibrate_command(self.profile, config, self.table_path, out))
        return probe

    def recalibrate_here(self, probe: dict, subnets: int = AUTO_CALIBRATION_SUBNETS) -> dict:
        """Refit this table's overhead to ``subnets`` paths timed here now, use it from now on, and save
        it in the user's table folder; returns the calibration's before/after figures."""
        from .calibrate import calibrate_table
        from .tables import save_table, user_tables_dir

        log.warning("latency table %s is off on this machine now (probe path %s: %.2fx its prediction): "
                    "recalibrating it from %d paths timed now", self.table_path or "(in memory)", probe["arch"],
                    probe["ratio"], subnets)
        calibrated = calibrate_table(self.table, self.supernet, self.profile, subnets=subnets, rounds=PROBE_ROUNDS,
                                     table_path=self.table_path)
        record = calibrated["calibration"]
        if not record["usable"]:
            # Paths timed now that the refit cannot predict: the machine is busy (in a pipeline, right after
            # training, torch's threads still compete), not drifted. Keep the table; never store such a fit.
            log.warning("recalibration not used: only %.0f%% of the paths timed now within ±10%% after the refit (a "
                        "busy machine?); the table stays as it was. When the machine is quiet: %s",
                        record["after"]["within_10_pct"], calibrate_command(
                            self.profile, self.supernet.config.model_dump(mode="json"), self.table_path, "NEW.json"))
            return {k: record[k] for k in ("model", "factor", "before", "after", "usable")} | {"table": None}
        path = user_tables_dir(self.profile) / table_filename(self.supernet.config.model_dump(mode="json"))
        save_table(calibrated, path)
        log.warning("recalibrated: within ±10%% on those paths %.0f%% before, %.0f%% after (each predicted by a fit "
                    "without it); the table is now %s", record["before"]["within_10_pct"],
                    record["after"]["within_10_pct"], path)
        self.table, self.table_path = calibrated, path
        self._scale, self._offset = calibrated["overhead"]["scale"], calibrated["overhead"]["offset_ms"]
        self.note = (f"predicted from a latency table measured on this machine and recalibrated at the start of this "
                     f"search (it had drifted {probe['ratio']:.2f}x), stored at {path}.")
        return {k: record[k] for k in ("model", "factor", "before", "after", "usable")} | {"table": str(path)}

    def describe(self) -> dict:
        return {**super().describe(), "table": str(self.table_path) if self.table_path else None,
                "measured_on": self.table["metadata"].get("cpu_model"), "measured_at": self.table["metadata"].get("date"),
                "metadata": self.table["metadata"], "overhead": self.table["overhead"],
                "holdout_accuracy": self.table.get("accuracy"), **({"note": self.note} if self.note else {})}


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
