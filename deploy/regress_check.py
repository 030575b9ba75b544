"""A latency regression check's options, declared once. Torch-free.

``RegressCheck`` is what a check is asked: its decision settings (tolerance, confidence, rounds,
same model) and where its baseline and report are. Both CLIs build their options from it
(`pathnas-infer regress` with ``add_arguments``, `pathnas-edge regress` through
pathnas/cli/options.py:record_options), the checks take it whole, and a check on another device is
sent as the command line ``to_argv`` writes and ``from_arguments`` reads back there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pathnas.errors import ConfigError

from .regress_stats import CONFIDENCE, ROUND_SIZE, ROUNDS, TOLERANCE


@dataclass(frozen=True)
class RegressCheck:
    tolerance: float = TOLERANCE
    confidence: float = CONFIDENCE
    rounds: int = ROUNDS
    same_model: bool = False
    baseline: Path | None = None
    junit: Path | None = None
    update_baseline: bool = False

    HELP = {
        "tolerance": f"allowed slowdown, {TOLERANCE} = {100 * TOLERANCE:.0f}%",
        "confidence": "of the bootstrap interval of the slowdown, in [0.5, 1)",
        "rounds": f"timing rounds, each in fresh runtime sessions, of {ROUND_SIZE} samples of the model and "
                  f"{ROUND_SIZE} of the reference model",
        "same_model": "refuse a baseline measured for another model (default: compare with it, e.g. the previous "
                      "release's, and say whose it is)",
        "baseline": "a baseline file: the previous release's, or one measured on this device (a bundle's default: "
                    "its signed manifest's); with --update-baseline, where to write it (a bundle's default: "
                    "BUNDLE.baseline.json beside it)",
        "junit": "write a JUnit XML report here (also when the check cannot run)",
        "update_baseline": "measure on this device and write a baseline file (never into a bundle)",
    }
    # What the device is told when the check runs there: its baseline and report are paths of its own.
    SENT = ("tolerance", "confidence", "rounds", "same_model")

    def __post_init__(self):
        problems = []
        if self.tolerance < 0:
            problems.append("--tolerance must be >= 0")
        if not 0.5 <= self.confidence < 1:
            problems.append("--confidence in [0.5, 1)")
        if self.rounds < 1:
            problems.append("--rounds >= 1")
        if problems:
            raise ConfigError(", ".join(problems))

    @staticmethod
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    def to_argv(self) -> list[str]:
        """The decision settings as `pathnas-infer regress` options (for a check run on another device)."""
        argv = []
        for name in self.SENT:
            value = getattr(self, name)
            if isinstance(value, bool):
                argv += [self.flag(name)] if value else []
            else:
                argv += [self.flag(name), str(value)]
        return argv

    @classmethod
    def add_arguments(cls, parser) -> None:
        """The options of an argparse parser (`pathnas-infer regress`)."""
        for f in dataclasses.fields(cls):
            kind = type(f.default) if f.default is not None else Path
            if kind is bool:
                parser.add_argument(cls.flag(f.name), action="store_true", help=cls.HELP[f.name].replace("%", "%%"))
            else:
                parser.add_argument(cls.flag(f.name), type=kind, default=f.default,
                                    help=cls.HELP[f.name].replace("%", "%%"))

    @classmethod
    def from_arguments(cls, args) -> "RegressCheck":
        """The check an argparse namespace (of ``add_arguments``) asks for."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
