"""Seeds derived from a run's seed, and the shuffling that uses them.

Everything random in a run is drawn from streams named by (seed, purpose, epoch, ...): the
order of the training images, the augmentation of each image, the path of each SPOS step.
A stream depends on nothing that happened before it, so a resumed run draws exactly what an
uninterrupted one drew, whatever the number of loader workers or DDP ranks.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.data import Sampler


def derive_seed(seed: int, *purpose: object) -> int:
    """A 63-bit seed for one stream of a run (SHA-256 of the run's seed and the stream's name)."""
    text = ":".join(str(p) for p in (seed, *purpose))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *purpose: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))


class EpochShuffle(Sampler[int]):
    """A shuffled order that is a function of (seed, epoch) only; ``set_epoch`` moves to another one.

    Never calling ``set_epoch`` gives the same order every time (the calibration loader: every
    path's BN statistics are recalibrated on the same images).
    """

    def __init__(self, size: int, seed: int, purpose: str = "order"):
        self.size, self.seed, self.purpose = size, seed, purpose
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=generator(self.seed, self.purpose, self.epoch)).tolist())
