"""A deterministic synthetic H&E-like histology data set: the embedded default for the demo and tests.

Pink eosin stroma with fibre streaks and purple hematoxylin nuclei with chromatin speckle.
Four grades (BreakHis-like: normal, benign, in situ, invasive) differ in nuclear density, size,
pleomorphism (irregular outlines, varied sizes) and hyperchromasia. Neighbouring grades'
ranges overlap, so a small CNN can learn the task but not from the mean colour alone.
Every image is drawn from its own generator seeded by (seed, grade, index), so the data set is
byte-identical whatever the generation order (across machines: for the same numpy, Pillow and zlib).
"""
from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..io import write_bytes_atomic, write_json_atomic
from ..errors import ConfigError
from .folders import MARKER_FILE, DataError

# Bump whenever the pixels change, so an existing data set is never mistaken for a new one.
# /2: the nucleus count no longer scales with the image size (sizes other than 64 were too sparse).
GENERATOR_VERSION = "pathnas-synth-he/2"
CLASSES = ("normal", "benign", "in_situ", "invasive")
SEGMENT_CLASSES = ("background", "nucleus")

# Per grade, (low, high) ranges: nuclei per tile, mean radius in px at the 64x64 reference size,
# pleomorphism (relative spread of radius and outline irregularity), hyperchromasia (0..1 darker).
# A tile covers the same field of view whatever its size: lengths scale with the size, counts do not,
# so the grades keep the same nuclear density at every resolution.
GRADES = {
    "normal": dict(count=(5, 12), radius=(2.0, 2.9), pleo=(0.04, 0.16), hyper=(0.00, 0.20)),
    "benign": dict(count=(9, 18), radius=(2.4, 3.3), pleo=(0.10, 0.26), hyper=(0.10, 0.35)),
    "in_situ": dict(count=(14, 26), radius=(2.8, 3.9), pleo=(0.18, 0.40), hyper=(0.25, 0.55)),
    "invasive": dict(count=(19, 34), radius=(3.2, 4.7), pleo=(0.30, 0.60), hyper=(0.40, 0.75)),
}
# Microns the side of every synthetic tile stands for: 1.0 um per pixel at 64 px (about a 10x objective).
SYNTH_FIELD_UM = 64.0
EOSIN = np.array([235.0, 160.0, 200.0])
HEMATOXYLIN = np.array([80.0, 40.0, 130.0])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1


def render(rng: np.random.Generator, grade: str, size: int) -> tuple[Image.Image, np.ndarray]:
    """One RGB tile of a grade and its nucleus mask (uint8, 0/1)."""
    p = GRADES[grade]
    scale = size / 64.0
    # Stain variation per slide: eosin and hematoxylin tints drift a little.
    eosin = EOSIN + rng.normal(0, 8, 3)
    hema = HEMATOXYLIN + rng.normal(0, 6, 3)

    # Stroma: base tint, low-frequency density changes, lighter fibre streaks.
    texture = 0.6 * _smooth_noise(rng, size, 6) + 0.4 * _smooth_noise(rng, size, 16)
    rgb = eosin[None, None, :] * (1.0 + 0.07 * texture[..., None])
    fibres = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(fibres)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.9) * size
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(60, 140)), width=max(1, int(scale)))
    fibres = np.asarray(fibres.filter(ImageFilter.GaussianBlur(1.2 * scale)), dtype=np.float32) / 255.0
    rgb = rgb * (1 - 0.25 * fibres[..., None]) + 255.0 * 0.25 * fibres[..., None]

    # Nuclei: irregular polygons around ellipses; pleomorphism spreads size and outline.
    count = int(round(_uniform(rng, p["count"])))
    mean_radius = _uniform(rng, p["radius"]) * scale
    pleo = _uniform(rng, p["pleo"])
    hyper = _uniform(rng, p["hyper"])
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    angles = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        radius = max(1.0, mean_radius * (1 + pleo * rng.normal()))
        elong = 1 + rng.uniform(0, 0.3 + pleo)
        theta = rng.uniform(0, np.pi)
        wobble = 1 + pleo * 0.5 * rng.normal(size=angles.size)
        rx, ry = radius * elong * wobble, radius / elong * wobble
        xs = cx + rx * np.cos(angles) * np.cos(theta) - ry * np.sin(angles) * np.sin(theta)
        ys = cy + rx * np.cos(angles) * np.sin(theta) + ry * np.sin(angles) * np.cos(theta)
        draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    mask = (np.asarray(mask_img) > 127).astype(np.uint8)

    alpha = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(0.6 * scale)), dtype=np.float32) / 255.0
    speckle = rng.uniform(0, 1, (size, size)).astype(np.float32)
    nucleus = hema[None, None, :] * (1 - 0.45 * hyper - 0.25 * speckle[..., None] * (0.5 + hyper))
    rgb = rgb * (1 - 0.92 * alpha[..., None]) + nucleus * 0.92 * alpha[..., None]
    rgb += rng.normal(0, 3.0, rgb.shape)  # sensor noise
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.4))
    return image, mask


def _png_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _file_names(task: str, n_per_class: int) -> list[tuple[int, int, list[str]]]:
    """(grade index, image index, relative output paths) of every tile, in generation order."""
    names = []
    for c, grade in enumerate(CLASSES):
        for i in range(n_per_class):
            if task == "classify":
                names.append((c, i, [f"{grade}/{grade}_{i:04d}.png"]))
            else:  # the grades in consecutive blocks of stems, one images/ + masks/ pair each
                stem = f"img_{c * n_per_class + i:04d}"
                names.append((c, i, [f"images/{stem}.png", f"masks/{stem}.png"]))
    return names


def _refuse_foreign_files(out: Path, expected: set[str]) -> None:
    """Stop before mixing the synthetic tiles into another data set (or an unfinished one of other
    parameters, whose leftover tiles would silently join the new data set)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    folders = {rel.split("/")[0] for rel in expected}
    for entry in sorted(out.iterdir()):
        if entry.name.startswith("."):  # temporary files of an interrupted write
            continue
        inside = sorted(entry.iterdir()) if entry.is_dir() and entry.name in folders else [entry]
        for path in inside:
            if not path.name.startswith(".") and path.relative_to(out).as_posix() not in expected:
                raise DataError(f"{path}: {out} holds files this data set would not write (another data set or "
                                f"an unfinished one with other parameters); choose another folder or delete it")


def generate(
    out_dir: str | os.PathLike,
    task: Literal["classify", "segment"] = "classify",
    n_per_class: int = 60,
    image_size: int = 64,
    seed: int = 0,
) -> dict:
    """Write the data set into ``out_dir`` and return its summary (also saved as dataset.json).

    Idempotent: an existing complete data set with the same parameters is left as it is; one with
    other parameters is a DataError. Every file is written atomically and dataset.json, the
    completion marker, last, so an interrupted run is simply run again.
    """
    if task not in ("classify", "segment"):
        raise ConfigError(f"task {task!r}: allowed values are classify, segment")
    if n_per_class < 3:
        raise ConfigError(f"n_per_class {n_per_class}: at least 3 per class are needed for train/val/test splits")
    if image_size < 16:
        raise ConfigError(f"image_size {image_size}: at least 16 pixels")
    out = Path(out_dir)
    params = {"generator": GENERATOR_VERSION, "task": task, "n_per_class": n_per_class,
              "image_size": image_size, "seed": seed}
    marker = out / MARKER_FILE
    if marker.exists():
        try:
            existing = json.loads(marker.read_text())
            found = {k: existing.get(k) for k in params}
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
            raise DataError(f"{marker}: not a readable data set marker ({err}); delete the folder to generate again") from None
        if found == params:
            return existing
        differ = ", ".join(f"{k}={found[k]!r} (asked {params[k]!r})" for k in params if found[k] != params[k])
        raise DataError(f"{marker}: a data set with other parameters is already there ({differ}); "
                        f"choose another --out or delete it")
    names = _file_names(task, n_per_class)
    _refuse_foreign_files(out, {rel for _, _, rels in names for rel in rels})
    for c, i, rels in names:
        image, mask = render(np.random.default_rng([seed, c, i]), CLASSES[c], image_size)
        write_bytes_atomic(out / rels[0], _png_bytes(image))
        if task == "segment":
            write_bytes_atomic(out / rels[1], _png_bytes(Image.fromarray(mask, "L")))
    summary = {
        **params,
        "classes": list(CLASSES if task == "classify" else SEGMENT_CLASSES),
        "counts": {grade: n_per_class for grade in CLASSES},  # segment: tiles per grade
        # Declared resolution: a tile covers a 64 um field whatever its size (nuclei 4-9 um across).
        "mpp": SYNTH_FIELD_UM / image_size,
        "description": "synthetic H&E-like tiles (pink stroma, purple nuclei); grades differ in nuclear "
                       "density, size, pleomorphism and hyperchromasia; not real patient data",
    }
    write_json_atomic(marker, summary)
    return summary
