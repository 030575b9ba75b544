"""Overviews of large images for people: a thumbnail painted from the tiles, heatmaps, masks. Torch-free.

The overview is filled while the tiles are read for inference, so a slide is decoded once.
It samples every ``step``-th pixel of the full image (nearest neighbour, like image[::step, ::step]).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Overview:
    """Arrays at 1/step of an image's resolution, painted region by region."""

    def __init__(self, height: int, width: int, max_side: int):
        self.step = max(1, -(-max(height, width) // max_side))
        self.shape = (-(-height // self.step), -(-width // self.step))
        self.image = np.full((*self.shape, 3), 255, np.uint8)

    def _window(self, y: int, x: int, h: int, w: int) -> tuple[slice, slice, slice, slice]:
        """Canvas slices and region slices of the sampled pixels (global coordinates divisible by step)."""
        oy, ox = (-y) % self.step, (-x) % self.step
        ny, nx = len(range(oy, h, self.step)), len(range(ox, w, self.step))
        cy, cx = (y + oy) // self.step, (x + ox) // self.step
        return (slice(cy, cy + ny), slice(cx, cx + nx), slice(oy, h, self.step), slice(ox, w, self.step))

    def paint(self, canvas: np.ndarray, y: int, x: int, region: np.ndarray) -> None:
        cy, cx, ry, rx = self._window(y, x, *region.shape[:2])
        canvas[cy, cx] = region[ry, rx]

    def add(self, canvas: np.ndarray, y: int, x: int, h: int, w: int, value: float) -> None:
        cy, cx, _, _ = self._window(y, x, h, w)
        canvas[cy, cx] += value

    def heatmap(self, positions: np.ndarray, scores: np.ndarray, tile: int) -> np.ndarray:
        """The overview tinted red by each tile's score (0..1) at its (y, x); overlapping tiles are averaged."""
        heat = np.zeros(self.shape, np.float32)
        hits = np.zeros(self.shape, np.uint16)
        for (y, x), score in zip(positions.tolist(), scores.tolist()):
            self.add(heat, y, x, tile, tile, score)
            self.add(hits, y, x, tile, tile, 1)
        alpha = np.divide(heat, hits, out=heat, where=hits > 0)  # in place, and one channel at a time below:
        del hits                                                  # the overview may be large
        alpha *= 0.6
        keep = 1 - alpha
        tinted = self.image.copy()
        for channel in range(3):
            value = tinted[..., channel] * keep
            if channel == 0:
                value += 255 * alpha  # towards red
            tinted[..., channel] = value
        return tinted
