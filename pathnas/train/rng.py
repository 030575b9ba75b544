"""The global random streams of a process (torch, CUDA, numpy, Python): seeded from the run's seed,
saved in a checkpoint and restored on resume.

What a training step draws from them: dropout (torch), timm's mixup/cutmix (numpy), augmentation
in the main process is not among them (pathnas.data seeds it per image). The states are kept as
tensors and plain lists, so a checkpoint still loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..data import derive_seed


def seed_everything(seed: int, *purpose: object) -> None:
    """Seed torch (every device), numpy and Python's ``random`` from (seed, purpose)."""
    value = derive_seed(seed, *purpose)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU brings its tensors there
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
