"""The smoke test's parts: the PyTorch model's outputs on a few validation images, the same images
through `pathnas-infer` in a process where the toolchain cannot be imported, and the comparison."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathnas.io import read_json

# pathnas-infer with the toolchain made unimportable: proof that the bundle runs without it.
_TORCH_FREE = ("import runpy, sys\n"
               "for name in ('torch', 'torchvision', 'timm', 'pathnas.train', 'pathnas.data', 'pathnas.spaces'):\n"
               "    sys.modules[name] = None\n"
               "sys.argv[0] = 'pathnas-infer'\n"
               "runpy.run_module('pathnas.deploy.toolkit', run_name='__main__')\n")


@dataclass(frozen=True)
class Reference:
    task: str
    classes: list[str]
    paths: list[Path]
    probabilities: np.ndarray  # softmax over classes: (N, C), or (N, C, H, W) for segmentation


def reference_outputs(model_path: Path, data: Path, images: int) -> Reference:
    """The validated PyTorch model's softmax on the first ``images`` validation images, preprocessed as in
    training (the reference that validation compared every artifact with)."""
    import torch

    from pathnas.data import ImageClassificationFolder, SegmentationFolder, build_transforms, segmentation_classes
    from pathnas.subnet import load_subnet

    model, meta = load_subnet(model_path)
    task, size = meta["task"], meta["space_config"]["input_size"]
    transform = build_transforms(task, size, train=False)
    dataset = ImageClassificationFolder(data, "val", transform) if task == "classify" else \
        SegmentationFolder(data, "val", transform, num_classes=len(segmentation_classes(data)))
    picked = list(range(min(images, len(dataset))))
    with torch.no_grad():
        probabilities = model.eval()(torch.stack([dataset[i][0] for i in picked])).softmax(1).numpy()
    return Reference(task, meta.get("classes") or [], [dataset.samples[i][0] for i in picked], probabilities)


@dataclass(frozen=True)
class InferRun:
    returncode: int
    stderr: str
    rows: list[dict]  # pathnas-infer's result per input, in the order given (empty when it failed)


def run_torch_free(bundle: Path, paths: list[Path], trusted_key: Path | None, workdir: Path) -> InferRun:
    """`pathnas-infer predict BUNDLE PATHS...` in a fresh process that cannot import the toolchain."""
    command = [sys.executable, "-c", _TORCH_FREE, "predict", str(bundle), *map(str, paths), "--out",
               str(workdir / "out.json"), "--tile", "never", "--mask-dir", str(workdir / "masks")]
    if trusted_key is not None:
        command += ["--trusted-key", str(trusted_key)]
    result = subprocess.run(command, capture_output=True, text=True)
    rows = []
    if result.returncode == 0:
        by_input = {r["input"]: r for r in read_json(workdir / "out.json", "pathnas-infer output")["results"]}
        rows = [by_input[str(p)] for p in paths]
    return InferRun(result.returncode, result.stderr, rows)


def compare_outputs(reference: Reference, rows: list[dict], prob_atol: float, min_pixel_agreement: float) -> dict:
    """Classification: the same class and every probability within ``prob_atol``; segmentation: at least
    ``min_pixel_agreement`` of mask pixels alike. The figures, ``passed`` and, on a miss, ``problem``."""
    from PIL import Image

    if reference.task == "classify":
        probs = np.array([[float(r[f"prob_{c}"]) for c in reference.classes] for r in rows])
        diff = float(np.abs(probs - reference.probabilities).max())
        same = float((probs.argmax(1) == reference.probabilities.argmax(1)).mean())
        out = {"max_abs_prob_diff": diff, "top1_agreement": same, "passed": bool(same == 1.0 and diff <= prob_atol)}
        problem = f"top-1 agreement {same:.0%}, max |delta p| {diff:.2g} (allowed {prob_atol})"
    else:
        agree = []
        for r, p in zip(rows, reference.probabilities):
            mask = np.asarray(Image.open(r["mask"]))
            ref = Image.fromarray(p.argmax(0).astype(np.uint8)).resize(mask.shape[::-1], Image.NEAREST)
            agree.append(float((np.asarray(ref) == mask).mean()))
        out = {"pixel_agreement": min(agree), "passed": bool(min(agree) >= min_pixel_agreement)}
        problem = f"mask pixel agreement {min(agree):.2%}"
    if not out["passed"]:
        out["problem"] = f"its outputs differ from the PyTorch model's: {problem}"
    return out


def workstation_commands(bundle: Path, trusted_key: Path | None, signed: bool) -> list[str]:
    """What to run on the workstation: verify the bundle, then infer (with the key to trust, if signed)."""
    trust = f" --trusted-key {trusted_key.name}" if trusted_key is not None else (" --trusted-key KEY.pub" if signed
                                                                                  else "")
    return [f"pathnas-infer verify {bundle.name}{trust}",
            f"pathnas-infer {bundle.name} SLIDES_OR_FOLDER... --out results/{trust}"]
