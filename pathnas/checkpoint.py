"""PyTorch checkpoints of this project: written atomically, read with errors that name the file."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, InvalidFileError, MissingFileError, UserError
from .io import atomic_path


class DiskFullError(UserError):
    """No space left to write a checkpoint; the previous one is kept."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as err:
        # torch reports a full disk as a RuntimeError from its C++ writer; errno says it for plain OSErrors.
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or "file write failed" in str(err):
            raise DiskFullError(f"no space left in {path.parent}; the previous checkpoint is kept") from None
        raise


def load_checkpoint(path: str | os.PathLike, expected_format: str, kind: str, map_location="cpu") -> dict:
    """A checkpoint dict written by this project, with a clear error for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{kind} checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)  # data only: never unpickle code
    except Exception as err:  # torch raises several types for a damaged or truncated file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidFileError(f"{kind} checkpoint {path} is damaged or truncated ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        raise InvalidFileError(f"{path}: not a pathnas {kind} checkpoint (expected format {expected_format})")
    return ckpt


def resume_training(path: str | os.PathLike, expected_format: str, kind: str, model, parts,
                    metrics_path: Path | None, expected: dict[str, Any], map_location="cpu") -> tuple[int, float]:
    """Load a training checkpoint (``last.pt``) into ``model`` and ``parts`` (optimizer, scheduler,
    scaler) and cut ``metrics_path`` (None: leave it, e.g. on DDP ranks that do not write it) back
    to the epochs it holds; returns (epochs done, best metric).

    ``expected`` maps checkpoint keys to the values this run has (its settings, its space
    configuration): a checkpoint made with others is refused, naming what changed, instead
    of being silently mixed with new settings.
    """
    from .io import read_jsonl, rewrite_jsonl

    ckpt = load_checkpoint(path, expected_format, kind, map_location)
    changed = sorted(key for key, value in expected.items() if ckpt.get(key) != value)
    if changed:
        details = "; ".join(_difference(key, ckpt.get(key), expected[key]) for key in changed)
        raise ConfigError(f"{path} was made with other settings ({details}); use another run directory, "
                          f"or restore the settings to resume it")
    model.load_state_dict(ckpt["model"])
    parts.load_state_dict(ckpt["training"])
    epoch = int(ckpt["epoch"])
    # Drop log lines of an epoch that ran after the checkpoint but never finished.
    if metrics_path is not None:
        rewrite_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) <= epoch])
    return epoch, float(ckpt["best_metric"])


def _difference(key: str, saved: Any, current: Any) -> str:
    if isinstance(saved, dict) and isinstance(current, dict):
        fields = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        return f"{key}: " + ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in fields)
    return f"{key} {saved!r} -> {current!r}"
