"""PyTorch checkpoints of this project: written atomically, read with errors that name the file,
resumed only with the settings they were made with."""
from __future__ import annotations

import errno
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ConfigError, InvalidFileError, MadeOtherwiseError, MissingFileError, UserError
from .io import atomic_path


# The files a training run (supernet pretraining, retraining) writes into its folder; the run layout
# (pathnas.pipeline.layout) builds on these names.
LAST_CHECKPOINT = "last.pt"  # written after every epoch: what --resume continues
BEST_CHECKPOINT = "best.pt"  # the epoch with the best validation metric
METRICS_LOG = "metrics.jsonl"  # one line per finished epoch


class CheckpointMismatchError(MadeOtherwiseError, ConfigError):
    """A checkpoint made with other settings than this run's."""


class DiskFullError(UserError):
    """No space left to write a checkpoint; the previous one is kept."""


def _is_disk_full(err: BaseException) -> bool:
    # torch reports a full disk as a RuntimeError from its C++ writer; errno says it for plain OSErrors.
    return (getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)
            or "file write failed" in str(err))


@contextmanager
def disk_full_guard(folder: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk while writing into ``folder`` into one line: where space ran out, what is kept."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err):
            raise DiskFullError(f"no space left in {folder}; the previous checkpoint is kept") from None
        raise


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    with disk_full_guard(path.parent), atomic_path(path) as tmp:
        torch.save(obj, tmp)


def settings_hash(settings: dict) -> str:
    """SHA-256 of a JSON-able settings dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(path: str | os.PathLike, expected_format: str, kind: str, map_location="cpu") -> dict:
    """A checkpoint dict written by this project, with a clear error for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{kind} checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)  # data only: never unpickle code
    except Exception as err:  # torch raises several types for a damaged or truncated file
        if "Weights only load failed" in str(err):
            # torch's own advice (load with weights_only=False) would execute whatever the file holds
            raise InvalidFileError(f"{kind} checkpoint {path} is damaged or not one of this project's: it does not "
                                   f"hold plain data (tensors, numbers, strings), so it is not loaded") from None
        reason = (str(err).splitlines()[0] if str(err) else type(err).__name__)[:160]
        raise InvalidFileError(f"{kind} checkpoint {path} is damaged or truncated ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        raise InvalidFileError(f"{path}: not a pathnas {kind} checkpoint (expected format {expected_format})")
    return ckpt


@dataclass
class Resumed:
    epoch: int  # epochs completed
    best_metric: float
    checkpoint: dict  # the rest of it (random states, metrics)


# Why a change cannot be resumed, where that is not obvious.
_WHY = {
    "epochs": "the learning-rate schedule is laid out over every epoch, so a run cannot be lengthened or cut",
    "max_steps_per_epoch": "the learning-rate schedule is laid out over every step",
    "warmup_epochs": "the learning-rate schedule is laid out over every step",
    "sampler": "a supernet is trained by one path sampler from start to end (--sampler)",
}


def resume_training(path: str | os.PathLike, expected_format: str, kind: str, model, parts,
                    metrics_path: Path | None, expected: dict[str, Any], settings: dict[str, Any],
                    map_location="cpu") -> Resumed:
    """Load a training checkpoint (``LAST_CHECKPOINT``) into ``model`` and ``parts`` (optimizer, scheduler,
    scaler) and cut ``metrics_path`` (None: leave it, e.g. on DDP ranks that do not write it) back
    to the epochs it holds.

    A checkpoint is resumed only by the run that made it: ``expected`` maps checkpoint keys to the
    values this run has (its space configuration, its subnet's hash), and ``settings`` are the
    settings that shape the training, compared through the hash the checkpoint holds. One made
    otherwise is refused, naming what changed, instead of being silently mixed with the new.
    """
    from .io import read_jsonl, rewrite_jsonl

    ckpt = load_checkpoint(path, expected_format, kind, map_location)
    changed = [_difference(key, ckpt.get(key), value) for key, value in sorted(expected.items())
               if ckpt.get(key) != value]
    if ckpt.get("settings_hash") != settings_hash(settings):
        changed.append(_difference("settings", ckpt.get("settings") or {}, settings))
    if changed:
        why = sorted({reason for name, reason in _WHY.items() if any(f" {name} " in f" {c} " for c in changed)})
        raise CheckpointMismatchError(
            f"{path} was made with other settings ({'; '.join(changed)})" + (f": {'; '.join(why)}" if why else "")
            + f"; use another run directory (or delete {Path(path).parent} to start afresh), or restore the "
              f"settings to resume it", changed)
    model.load_state_dict(ckpt["model"])
    parts.load_state_dict(ckpt["training"])
    epoch = int(ckpt["epoch"])
    # Drop log lines of an epoch that ran after the checkpoint but never finished.
    if metrics_path is not None:
        rewrite_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r.get("epoch", 0) <= epoch])
    return Resumed(epoch, float(ckpt["best_metric"]), ckpt)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _difference(key: str, saved: Any, current: Any) -> str:
    if isinstance(saved, dict) and isinstance(current, dict):
        fields = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        return f"{key}: " + ", ".join(f"{k} {_shown(saved.get(k))} -> {_shown(current.get(k))}" for k in fields)
    return f"{key} {_shown(saved)} -> {_shown(current)}"
