"""Overviews of large images for people: a thumbnail painted from the tiles, heatmaps, masks. Torch-free.

The overview is filled while the tiles are read for inference, so a slide is decoded once.
It samples every ``step``-th pixel of the full image (nearest neighbour, like image[::step, ::step]).
The same grid carries the slide's class map (each pixel's class from the tiles over it), from which
the slide-level areas are counted (answers.py), and the fixed-size thumbnail a person glances at.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

THUMBNAIL_PX = 512  # every slide's thumbnail is this square, the slide fitted in it on white
OVERLAY_ALPHA = 0.45


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

    def class_map(self, positions: np.ndarray, scores: np.ndarray, tile: int) -> np.ndarray:
        """Each overview pixel's class (int16): the argmax of the class probabilities summed over the tiles
        covering it (overlapping tiles vote together), -1 where no classified tile covers it. One class at a
        time, so that memory stays at three overview-sized planes whatever the number of classes."""
        classes = np.full(self.shape, -1, np.int16)
        best = np.zeros(self.shape, np.float32)
        plane = np.empty(self.shape, np.float32)
        places = [self._window(y, x, tile, tile)[:2] for y, x in positions.tolist()]
        for c in range(scores.shape[1]):
            plane.fill(0)
            for (cy, cx), p in zip(places, scores[:, c].tolist()):
                plane[cy, cx] += p
            better = plane > best
            classes[better] = c
            np.maximum(best, plane, out=best)
        return classes


def thumbnail(image: np.ndarray, classes: np.ndarray, palette: list[tuple[int, int, int]],
              shown: np.ndarray | None = None, size: int = THUMBNAIL_PX) -> np.ndarray:
    """``size`` x ``size`` RGB: the overview fitted in the square on white, every pixel of ``classes``
    (>= 0, and where ``shown``) tinted with its class's colour."""
    h, w = classes.shape
    scale = size / max(h, w)
    fit = (max(1, round(w * scale)), max(1, round(h * scale)))
    keep = classes >= 0 if shown is None else (classes >= 0) & shown
    index = np.asarray(Image.fromarray(np.where(keep, classes % len(palette) + 1, 0).astype(np.uint8))
                       .resize(fit, Image.NEAREST))
    fitted = np.array(Image.fromarray(image).resize(fit, Image.BILINEAR))
    colours = np.asarray([(0, 0, 0), *palette], np.uint16)
    tint = index > 0
    alpha = round(100 * OVERLAY_ALPHA)
    for channel in range(3):
        plane = fitted[..., channel]
        plane[tint] = (plane[tint].astype(np.uint16) * (100 - alpha) + colours[index[tint], channel] * alpha) // 100
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(Image.fromarray(fitted), ((size - fit[0]) // 2, (size - fit[1]) // 2))
    return np.asarray(canvas)
