"""What WSInfer reads and writes, so other tools can use our bundles and our results. Torch-free.

- ``config.json`` in every bundle: WSInfer's model config (its zoo's schema, spec 1.0):
  ``spec_version``, ``architecture``, ``num_classes``, ``class_names``, ``patch_size_pixels``
  (the training images' side), ``spacing_um_px`` (their microns per pixel) and ``transform``
  (Resize, ToTensor, Normalize), written from preprocess.json and the labels. ``verify`` checks
  that it still says what preprocess.json says (``config_problems``).
- The per-slide CSV of WSInfer: ``minx,miny,width,height,prob_<class>...`` in level-0 pixels.
"""
from __future__ import annotations

import math

CONFIG = "config.json"
SPEC_VERSION = "1.0"
# torchvision's ToTensor divides by 255; preprocess.json states it as its scale.
TO_TENSOR_SCALE = 1 / 255


class ConfigMismatch(ValueError):
    """preprocess.json asks for what WSInfer's config cannot state."""


def model_config(preprocess: dict, labels: list[str], architecture: str) -> dict:
    """WSInfer's config.json for a model preprocessed as ``preprocess`` says, with these class names.

    ``spacing_um_px`` is null (and ``spacing_um_px_note`` says why) when the training data
    declared no resolution: a number there would be invented.
    """
    scale = float(preprocess["scale"])
    if not math.isclose(scale, TO_TENSOR_SCALE, rel_tol=1e-6):
        raise ConfigMismatch(f"scale {scale} is not 1/255: WSInfer's ToTensor cannot state it")
    size = int(preprocess["input_size"])
    config = {
        "spec_version": SPEC_VERSION,
        "architecture": architecture,
        "num_classes": len(labels),
        "class_names": list(labels),
        "patch_size_pixels": int(preprocess.get("image_px") or size),
        "spacing_um_px": preprocess.get("mpp"),
        "transform": [
            {"name": "Resize", "arguments": {"size": size}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(preprocess["mean"]), "std": list(preprocess["std"])}},
        ],
    }
    if config["spacing_um_px"] is None:
        config["spacing_um_px_note"] = "the training data declared no resolution (preprocess.json mpp is null)"
    return config


def config_problems(config: object, preprocess: dict, labels: list[str], where: str) -> list[str]:
    """What in ``config`` (config.json's contents) disagrees with preprocess.json and the labels."""
    if not isinstance(config, dict):
        return [f"{where}: not a JSON object"]
    try:
        expected = model_config(preprocess, labels, str(config.get("architecture", "")))
    except (ConfigMismatch, KeyError, TypeError, ValueError) as err:
        return [f"{where}: preprocess.json cannot be stated as a WSInfer config ({err})"]
    problems = []
    for key, value in expected.items():
        if key.endswith("_note"):
            continue
        if config.get(key) != value:
            problems.append(f"{where}: {key} is {config.get(key)!r}, but preprocess.json and the labels say {value!r}")
    return problems


def csv_header(labels: list[str]) -> list[str]:
    return ["minx", "miny", "width", "height", *(f"prob_{c}" for c in labels)]


def csv_row(minx: int, miny: int, side: int, probs) -> list:
    """One tile of WSInfer's per-slide CSV: its box in level-0 pixels and its class probabilities."""
    return [minx, miny, side, side, *(round(float(p), 6) for p in probs)]
