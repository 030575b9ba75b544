"""What every command shares: the consoles, logging, option defaults from the settings models,
and the one-line message a person gets when they press Ctrl-C."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel
from rich.console import Console

from pathnas.errors import ConfigError
from pathnas.settings import SPACES, SupernetChoice

console = Console()
err_console = Console(stderr=True)

SPACE_HELP = f"search space: {', '.join(SPACES)}"
OPTION_HELP = "extra space knob KEY=VALUE (repeatable), e.g. embed_dim=192 for vit"
RUN_HELP = "run directory (stages read and write it)"
JSON_HELP = "machine-readable output"

# What Ctrl-C leaves behind, said by the command that is running (see ``on_interrupt``).
_interrupt_hint = "nothing half-written was left behind; run the same command again"


def on_interrupt(hint: str) -> None:
    """Set the line printed if the user presses Ctrl-C now: what is saved and how to continue."""
    global _interrupt_hint
    _interrupt_hint = hint


def interrupt_hint() -> str:
    return _interrupt_hint


def setup_logging(verbose: bool) -> None:
    """The product's own lines at INFO; other libraries' (httpx requests, the ONNX exporter) only with --verbose."""
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=verbose, markup=False,
                          rich_tracebacks=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[handler], force=True)
    logging.getLogger("pathnas").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")  # third-party deprecation chatter; --verbose shows it


def setting(model: type[BaseModel], field: str, *param_decls: str, **kwargs) -> Any:
    """One typer option whose default and help come from ``model.field``, for a command that takes a few
    fields of a model without the model itself (``options.settings_options`` builds the model)."""
    from .options import settings_option

    return settings_option(model, field, *param_decls, **kwargs).default


def parse_options(options: list[str]) -> dict[str, Any]:
    """``--option key=value`` pairs; values are read as JSON where they parse (numbers, lists)."""
    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option embed_dim=192")
        try:
            out[key.strip()] = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            out[key.strip()] = raw
    return out


def space_knobs(input_size: Optional[int], width_mult: Optional[float], num_classes: Optional[int],
                options: list[str]) -> dict[str, Any]:
    knobs = parse_options(options)
    for key, value in (("input_size", input_size), ("width_mult", width_mult), ("num_classes", num_classes)):
        if value is not None:
            knobs[key] = value
    return knobs


def chosen_supernet(choice: SupernetChoice):
    """The supernet a command's space options name (``@settings_options(SupernetChoice)``), and its checkpoint."""
    knobs = space_knobs(choice.input_size, choice.width_mult, choice.num_classes, choice.option)
    return resolve_supernet(choice.supernet, choice.space, knobs)


def resolve_supernet(supernet: Optional[Path], space: Optional[str], knobs: dict[str, Any]):
    """A supernet from a checkpoint (its configuration fixed) or freshly built from a space and knobs."""
    from pathnas.spaces import build_supernet, space_config

    if supernet is not None:
        from pathnas.train import load_supernet

        if knobs:
            raise ConfigError("--supernet fixes the space configuration; drop --input-size/--width-mult/--option")
        return load_supernet(supernet)
    if space is None:
        raise ConfigError(f"give --space ({', '.join(SPACES)}) or --supernet CHECKPOINT")
    return build_supernet(space_config(space, **knobs)), None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
