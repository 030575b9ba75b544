"""What every supernet shares: its configuration fields, the choice layer, and the SPOS interface.

A supernet runs one path at a time (``forward(x, arch)``), samples paths uniformly
(``sample``), and turns a path into a plain standalone model (``extract``) whose eval-mode
output equals the supernet's on that path.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .base import Architecture, ArchitectureError, Decision, Option, SearchSpace


def base36(value: int) -> str:
    """One-character code of a small integer option (3 -> '3', 12 -> 'c'). 'id' is coded '0'."""
    if not 0 < value < 36:
        raise ValueError(f"option value {value} has no one-character code (1..35)")
    return "0123456789abcdefghijklmnopqrstuvwxyz"[value]


def kernel_decision(name: str, kernels: tuple[int, ...], with_identity: bool = True) -> Decision:
    """A kernel-size decision; 'id' (coded '0') is the identity / 1x1-projection choice."""
    options = [Option("id", "0")] if with_identity else []
    options += [Option(k, base36(k)) for k in kernels]
    return Decision(name, tuple(options))


class SpaceConfig(BaseModel):
    """Knobs shared by every space. Sub-classes add their own and fix ``space``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_classes: int = Field(4, ge=1, description="classes (segmentation: including background)")
    input_size: int = Field(224, ge=16, le=4096, description="square input side in pixels")
    width_mult: float = Field(1.0, gt=0.0, le=4.0, description="scales every channel count")
    in_chans: int = Field(3, ge=1)


class ChoiceLayer(nn.Module):
    """One decision of a single-path supernet: a candidate module per option."""

    def __init__(self, candidates: list[nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.candidates[index](x)


@dataclass(frozen=True)
class LatencyPart:
    """A piece of a network whose latency a device table stores (OFA-style, keyed by exact shape).

    ``key`` names the module and its exact input shape, so identical modules at identical
    shapes share one measurement. ``requires`` maps decision positions to the option values
    that select this part; an empty mapping marks a fixed part (stem, head) of every path.
    """

    key: str
    input_shape: tuple[int, ...]
    build: Callable[[], nn.Module] = field(compare=False, repr=False)
    requires: tuple[tuple[int, int | str], ...] = ()

    def selected_by(self, arch: Architecture) -> bool:
        return all(arch.values[pos] == value for pos, value in self.requires)


def shape_key(name: str, input_shape: tuple[int, ...]) -> str:
    return f"{name}@{'x'.join(map(str, input_shape))}"


def record_input_shapes(model: nn.Module, modules: dict[str, nn.Module], run: Callable[[], object]) -> dict[str, tuple]:
    """Input shape (batch 1) of each named module during ``run()``, in eval mode (BN stats untouched)."""
    shapes: dict[str, tuple] = {}

    def hook_for(name: str):
        def hook(_module, args) -> None:  # must return None: a pre-hook's return value replaces the inputs
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [m.register_forward_pre_hook(hook_for(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run()
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


class PathModel(nn.Sequential):
    """A standalone path of a supernet: its parts run in order (e.g. stem, features, head), no choice
    machinery; ``arch_code`` names the path. The parts keep their names, so weights load by name."""

    def __init__(self, arch_code: str, **parts: nn.Module):
        super().__init__(OrderedDict(parts))
        self.arch_code = arch_code


class Supernet(nn.Module):
    """Base class: holds the config and search space and checks architectures."""

    task: ClassVar[str]  # "classify" or "segment"

    def __init__(self, config: SpaceConfig, space: SearchSpace):
        super().__init__()
        self.config = config
        self.space = space

    def check(self, arch: Architecture | str) -> Architecture:
        """Accept an Architecture of this space or any text form of one."""
        if isinstance(arch, str):
            return self.space.parse(arch)
        if arch.space != self.space.name or len(arch.values) != len(self.space):
            raise ArchitectureError(f"architecture {arch.code!r} is of space {arch.space!r}, not {self.space.name!r}")
        return arch

    def option_index(self, position: int, value) -> int:
        return self.space.decisions[position].values.index(value)

    def sample(self, generator: torch.Generator) -> Architecture:
        return self.space.sample(generator)

    def forward(self, x: torch.Tensor, arch: Architecture | str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, arch: Architecture | str) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def latency_parts(self) -> list[LatencyPart]:  # pragma: no cover - abstract
        """Every fixed part and every (decision, option) part, with its exact input shape at batch 1.

        A path's latency is predicted as the sum of its fixed parts, the parts it selects
        and a calibrated overhead (what runs between parts). True identities have no part.
        """
        raise NotImplementedError

    def parts_for(self, arch: Architecture | str, parts: list[LatencyPart] | None = None) -> list[LatencyPart]:
        arch = self.check(arch)
        return [p for p in (parts if parts is not None else self.latency_parts()) if p.selected_by(arch)]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        c = self.config
        return torch.zeros(batch, c.in_chans, c.input_size, c.input_size)

