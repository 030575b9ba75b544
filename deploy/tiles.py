"""Tiles of a slide, read ahead by a pool of threads while the model runs on the previous batch. Torch-free.

Reading (decoding the slide's tiles), tissue detection and each tile's share of preprocessing
(``prepare``: resizing, channels first, still uint8) run in ``workers`` threads; the batch is then
normalised to float in one pass (``normalize``), and the caller runs the model on it. Decoders (imagecodecs,
OpenSlide), numpy and the inference runtimes release the GIL, so the two overlap and a slide
runs at the speed of the model rather than of model plus reading. Chunks of tile positions
are handed out in the order of ``tile_grid`` (block by block, so the readers' segment caches
serve neighbours) and their results are taken back in the same order: the output is the same
whatever the number of threads. At most ``2 x workers`` chunks are in flight, so memory does
not grow with the slide. ``workers=0`` reads in the calling thread (reading and inference take
turns: the benchmark's reference).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterator

import numpy as np

from .images import tile_grid, tissue_fraction


@dataclass
class Batch:
    """Tissue tiles ready for the model, and how many tiles were looked at to find them."""

    where: list[tuple[int, int, float]]  # (y, x, tissue fraction) in the level's pixels
    pixels: np.ndarray  # N x 3 x S x S float32, preprocessed
    seen: int  # tiles read since the previous batch, background included


def grid_size(height: int, width: int, tile: int, overlap: float) -> int:
    """How many tiles ``tile_grid`` yields (for progress bars), without listing them."""
    stride = max(1, int(round(tile * (1 - overlap))))

    def count(n: int) -> int:
        if n <= tile:
            return 1
        starts = (n - tile) // stride + 1
        return starts + ((n - tile) % stride != 0)

    return count(height) * count(width)


def _read_chunk(reader, positions: list[tuple[int, int]], tile: int, min_tissue: float,
                prepare: Callable[[np.ndarray], np.ndarray], paint) -> tuple[list, list, int]:
    where, pixels = [], []
    for y, x in positions:
        region = reader.read_region(y, x, tile, tile)
        if paint is not None:
            paint(y, x, region)
        fraction = tissue_fraction(region)
        if fraction >= min_tissue:
            where.append((y, x, fraction))
            pixels.append(prepare(region))
    return where, pixels, len(positions)


def _stacked(pixels: list[np.ndarray], normalize: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return normalize(np.stack(pixels)) if pixels else np.zeros((0, 3, 1, 1), np.float32)


def read_batches(reader, tile: int, overlap: float, min_tissue: float, prepare: Callable[[np.ndarray], np.ndarray],
                 normalize: Callable[[np.ndarray], np.ndarray], batch_size: int, workers: int = 2,
                 paint: Callable | None = None) -> Iterator[Batch]:
    """Batches of ``batch_size`` tissue tiles (the last one smaller) of ``reader``'s level, in grid order.

    ``prepare`` maps an HxWx3 uint8 tile to a 3xSxS array (uint8: resized, channels first), and
    ``normalize`` the Nx3xSxS stack of a batch to the model's float32 input; ``paint(y, x, tile)``
    sees every tile read (the overview), from the reader threads. With threads, the batch is
    stacked and normalised in the pool too, one batch ahead: the thread running the model only
    runs it (with the model on one thread, stacking and normalising there took about a tenth of
    its time, benchmarks/slide_throughput.py --threads 1).
    """
    grid = tile_grid(reader.height, reader.width, tile, overlap, reader.block)
    chunk = max(batch_size, 16)  # enough work per hand-over that threads do not wait on each other
    chunks = iter(lambda: list(islice(grid, chunk)), [])
    where: list = []
    pixels: list = []
    seen = 0

    def take(result):
        nonlocal seen
        w, p, n = result
        where.extend(w)
        pixels.extend(p)
        seen += n

    def full(final: bool) -> Iterator[tuple[list, list, int]]:
        """Whole batches of what was taken (all of it when ``final``): positions, tiles, tiles seen."""
        nonlocal where, pixels, seen
        while len(where) >= batch_size or (final and (where or seen)):
            n = min(batch_size, len(where))
            batch = (where[:n], pixels[:n], seen)
            where, pixels, seen = where[n:], pixels[n:], 0
            yield batch
            if not where and not seen:
                return

    if workers <= 0:
        for positions in chunks:
            take(_read_chunk(reader, positions, tile, min_tissue, prepare, paint))
            for w, p, n in full(False):
                yield Batch(w, _stacked(p, normalize), n)
        for w, p, n in full(True):
            yield Batch(w, _stacked(p, normalize), n)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="tile-reader") as pool:
        pending: deque = deque()  # chunks being read, in grid order
        ahead: deque = deque()  # batches being stacked and normalised, in grid order

        def stack(final: bool) -> Iterator[Batch]:
            for w, p, n in full(final):
                ahead.append((w, n, pool.submit(_stacked, p, normalize)))
            while len(ahead) > (0 if final else 1):  # one batch kept in the making while the model runs
                w, n, pixels_future = ahead.popleft()
                yield Batch(w, pixels_future.result(), n)

        try:
            for positions in chunks:
                pending.append(pool.submit(_read_chunk, reader, positions, tile, min_tissue, prepare, paint))
                while len(pending) >= 2 * workers:
                    take(pending.popleft().result())
                    yield from stack(False)
            while pending:
                take(pending.popleft().result())
                yield from stack(False)
            yield from stack(True)
        finally:  # an error or an abandoned generator: drop what was queued, wait for what runs
            for future in [*pending, *(f for _, _, f in ahead)]:
                future.cancel()
