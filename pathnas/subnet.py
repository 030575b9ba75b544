"""Standalone subnets: extraction from a supernet, and their checkpoint format."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import InvalidFileError
from .io import read_json
from .spaces import build_supernet, config_from_dict

SUBNET_FORMAT = "pathnas-subnet/1"


def save_subnet(path: Path, model: nn.Module, space_config: dict, arch: str, task: str, classes: list[str],
                **extra) -> None:
    save_checkpoint({"format": SUBNET_FORMAT, "space_config": space_config, "arch": arch, "task": task,
                       "classes": classes, "model": model.state_dict(), **extra}, path)


def build_subnet(space_config: dict, arch: str) -> nn.Module:
    """A freshly initialised standalone model of this architecture (no supernet weights)."""
    return build_supernet(config_from_dict(space_config)).extract(arch)


def load_subnet(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a standalone model from a subnet checkpoint; returns it (eval mode) and its metadata."""
    ckpt = load_checkpoint(path, SUBNET_FORMAT, "subnet", map_location)
    model = build_subnet(ckpt["space_config"], ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "training")}
    return model.eval(), meta


def best_arch_from_search(summary_path: Path) -> str:
    summary = read_json(summary_path, "search summary", "run `pathnas-edge search` first")
    if not summary.get("best"):
        raise InvalidFileError(f"{summary_path}: the search found no architecture that meets every budget; "
                         f"relax the budgets or pass --arch")
    return summary["best"]["arch"]


def extract(supernet_path: Path, arch: str, out: Path) -> dict:
    """The chosen path as a standalone model with the supernet's weights (BN statistics included)."""
    from .train import load_supernet

    supernet, ckpt = load_supernet(supernet_path)
    parsed = supernet.check(arch)
    model = supernet.extract(parsed)
    save_subnet(out, model, supernet.config.model_dump(mode="json"), parsed.code, supernet.task,
                ckpt.get("classes") or [], supernet=str(supernet_path))
    return {"arch": parsed.code, "params": sum(p.numel() for p in model.parameters()), "path": str(out)}
