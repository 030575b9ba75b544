"""Architectures as lists of choices, their compact codes, and strict validation.

A search space is an ordered list of decisions. Each decision has a small set of
options, and each option has a one-character symbol, so an architecture has one
canonical compact code (one character per decision) for prompts, logs and file
names. A person can also type the explicit form: the option values separated by
commas (``3,5,7,id,...``). Decisions that do not apply to an architecture (the
per-layer choices of ViT layers beyond its depth) take the placeholder ``-``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import UserError

INACTIVE = "-"


class ArchitectureError(UserError, ValueError):
    """An architecture that is not a member of its search space."""


@dataclass(frozen=True)
class Option:
    value: int | str
    symbol: str

    def __post_init__(self) -> None:
        if len(self.symbol) != 1 or self.symbol == INACTIVE or self.symbol == ",":
            raise ValueError(f"option symbol must be one character other than '-' and ',': {self.symbol!r}")


@dataclass(frozen=True)
class Decision:
    name: str
    options: tuple[Option, ...]

    @property
    def values(self) -> tuple[int | str, ...]:
        return tuple(o.value for o in self.options)

    def describe_allowed(self) -> str:
        return ", ".join(
            str(o.value) if str(o.value) == o.symbol else f"{o.value} (code {o.symbol})" for o in self.options
        )

    def by_symbol(self, symbol: str) -> Option | None:
        return next((o for o in self.options if o.symbol == symbol), None)

    def by_value(self, text: str) -> Option | None:
        return next((o for o in self.options if str(o.value) == text), None)


@dataclass(frozen=True)
class Architecture:
    """One member of a search space: a value per decision (``None`` where it does not apply)."""

    space: str
    values: tuple[int | str | None, ...]
    code: str

    def __str__(self) -> str:
        return self.code

    def explicit(self) -> str:
        return ",".join(INACTIVE if v is None else str(v) for v in self.values)


ActiveRule = Callable[[Sequence[int | str | None]], list[bool]]


class SearchSpace:
    """An ordered list of decisions with encode/decode/validate/sample.

    ``active_rule`` tells, from the values chosen so far, which decisions apply;
    by default all of them do.
    """

    def __init__(
        self,
        name: str,
        decisions: Sequence[Decision],
        active_rule: ActiveRule | None = None,
        size: int | None = None,
    ):
        self.name = name
        self.decisions = tuple(decisions)
        self._active_rule = active_rule
        # A conditional space (active_rule) cannot be counted as a plain product; its module says its size.
        self._size = size if size is not None else math.prod(len(d.options) for d in self.decisions)

    def __len__(self) -> int:
        return len(self.decisions)

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self)} decisions, {self.size():.3g} architectures)"

    def active(self, values: Sequence[int | str | None]) -> list[bool]:
        return self._active_rule(values) if self._active_rule else [True] * len(self.decisions)

    def size(self) -> int:
        """Number of distinct architectures."""
        return self._size

    # -- construction ------------------------------------------------------------------
    def from_values(self, values: Sequence[int | str | None]) -> Architecture:
        """Validate a list of option values (``None`` or ``'-'`` where a decision does not apply)."""
        values = list(values)
        if len(values) != len(self.decisions):
            raise ArchitectureError(
                f"{self.name}: an architecture has {len(self.decisions)} decisions, got {len(values)}"
            )
        return self._finish(self._lookup(values, Decision.by_value, "{!r}"))

    def decode(self, code: str) -> Architecture:
        """Validate a compact code (one character per decision)."""
        code = code.strip()
        if len(code) != len(self.decisions):
            raise ArchitectureError(
                f"{self.name}: a code has {len(self.decisions)} characters, got {len(code)} ({code!r})"
            )
        return self._finish(self._lookup(list(code), Decision.by_symbol, "code {!r}"))

    def _lookup(self, items: list, find, shown: str) -> list[int | str | None]:
        """Option values for raw items (values or code symbols); '-' or None where nothing is chosen."""
        chosen: list[int | str | None] = []
        for pos, (decision, raw) in enumerate(zip(self.decisions, items)):
            if raw is None or raw == INACTIVE:
                chosen.append(None)
                continue
            option = find(decision, str(raw))
            if option is None:
                raise ArchitectureError(
                    f"{self.name}: position {pos} ({decision.name}): {shown.format(raw)} is not allowed; "
                    f"allowed: {decision.describe_allowed()}"
                )
            chosen.append(option.value)
        return chosen

    def parse(self, text: str) -> Architecture:
        """Accept either the compact code or the explicit comma-separated values."""
        text = text.strip()
        if "," in text:
            return self.from_values([t.strip() for t in text.split(",")])
        return self.decode(text)

    def encode(self, values: Sequence[int | str | None]) -> str:
        return self.from_values(values).code

    def _finish(self, chosen: list[int | str | None]) -> Architecture:
        active = self.active(chosen)
        symbols = []
        for pos, (decision, value, is_active) in enumerate(zip(self.decisions, chosen, active)):
            if is_active and value is None:
                raise ArchitectureError(
                    f"{self.name}: position {pos} ({decision.name}) applies to this architecture and needs a "
                    f"value; allowed: {decision.describe_allowed()}"
                )
            if not is_active and value is not None:
                raise ArchitectureError(
                    f"{self.name}: position {pos} ({decision.name}) does not apply to this architecture "
                    f"(see the depth decision); write '{INACTIVE}' there"
                )
            symbols.append(INACTIVE if value is None else next(o.symbol for o in decision.options if o.value == value))
        return Architecture(self.name, tuple(chosen), "".join(symbols))

    # -- sampling ---------------------------------------------------------------------
    def sample(self, generator: torch.Generator) -> Architecture:
        """Uniform sample, decision by decision, skipping those that do not apply.

        Uses a torch.Generator so that every DDP rank seeded alike draws the same path.
        """
        chosen: list[int | str | None] = [None] * len(self.decisions)
        for pos, decision in enumerate(self.decisions):
            # Decisions are ordered so that a rule only depends on earlier positions.
            if not self.active(chosen[:pos] + [decision.values[0]] + [None] * (len(self.decisions) - pos - 1))[pos]:
                continue
            idx = int(torch.randint(len(decision.options), (1,), generator=generator))
            chosen[pos] = decision.options[idx].value
        return self._finish(chosen)

    def mutate_candidates(self, arch: Architecture) -> list[Architecture]:
        """Every architecture one active decision away (used by evolution and tests)."""
        out = []
        for pos, decision in enumerate(self.decisions):
            if arch.values[pos] is None:
                continue
            for option in decision.options:
                if option.value != arch.values[pos]:
                    values = list(arch.values)
                    values[pos] = option.value
                    try:
                        out.append(self.from_values(values))
                    except ArchitectureError:
                        pass
        return out

    def describe(self) -> list[dict]:
        """Decisions with their allowed values, for prompts and docs."""
        return [
            {"position": i, "name": d.name, "allowed": list(d.values), "codes": [o.symbol for o in d.options]}
            for i, d in enumerate(self.decisions)
        ]
