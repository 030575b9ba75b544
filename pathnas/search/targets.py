"""What a search evaluates: a pretrained supernet here, a tabular benchmark in tabular.py.

Both kinds offer the loop the same things: ``space``, ``metric_name``, ``latency_subject``
(what the caller's latency factory is handed), ``evaluate(arch)`` (the one costly step),
``cost`` (exact FLOPs and params), ``capacity`` (cheap FLOPs and params for the prior of
prior-bo), ``problem`` (a reason never to evaluate an architecture), ``members`` (every
architecture when they are few), ``prompt_facts``, ``identity`` (what the recorded
evaluations depend on) and ``describe``.

Same inputs, same search: every path's BN statistics are recalibrated on the same training
images, drawn once (from the seeded calibration loader) and kept in memory, whatever the
path's position in the search; a fine-tuned path draws from streams named by (seed, path).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pathnas.data.folders import SPLITS_FILE
from pathnas.errors import ConfigError
from pathnas.io import sha256_file
from pathnas.settings import SearchSettings
from pathnas.spaces import Architecture

from .bo import enumerate_space

log = logging.getLogger("pathnas.search")


def calibration_batches(loader, images: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` images of ``loader`` as batches in memory: every path sees exactly these."""
    batches, seen = [], 0
    if images <= 0:
        return batches
    for x, y in loader:
        take = min(len(x), images - seen)
        batches.append((x[:take].clone(), y[:take].clone()))
        seen += take
        if seen >= images:
            break
    return batches


def describe_dataset(data, root: Path) -> str:
    sizes = {s: len(getattr(data, s).dataset) for s in ("train", "val", "test")}
    text = (f"{data.task} into {data.num_classes} classes ({', '.join(data.classes)}); "
            f"{sizes['train']} training, {sizes['val']} validation and {sizes['test']} test images.")
    marker = root / "dataset.json"
    if marker.exists():
        try:
            description = json.loads(marker.read_text()).get("description")
        except (ValueError, OSError, AttributeError):
            description = None
        if isinstance(description, str) and description:
            text += f" {description}."
    return text


def space_notes(supernet) -> str:
    c = supernet.config
    head = ("A single-path one-shot supernet: every architecture inherits its weights from the pretrained "
            "supernet, its BatchNorm statistics recalibrated before it is evaluated. ")
    if c.space == "shufflenet":
        strided, pos = [], 0
        for repeats in c.stage_repeats:
            strided.append(pos)
            pos += repeats
        return head + (f"Each decision is the depthwise kernel of a ShuffleNetV2 unit with squeeze-excitation. 'id' "
                       f"skips the layer, except at the stride-2 layers (positions {', '.join(map(str, strided))}), "
                       f"where it is a 1x1 stride-2 projection. Input {c.input_size}x{c.input_size}, width "
                       f"multiplier {c.width_mult}.")
    if c.space == "unet":
        return head + (f"Each decision is the kernel of a VGG double-conv block with squeeze-excitation (4 encoder "
                       f"blocks, then 4 decoder blocks); 'id' is a 1x1 conv with BN. Input {c.input_size}x"
                       f"{c.input_size}.")
    return head + (f"Decision 0 is the depth; then for each block its number of heads ({c.heads_note}) "
                   f"and its MLP ratio of the {c.dim}-wide embedding. Blocks beyond the depth do not apply: write "
                   f"\"-\" there. Input {c.input_size}x{c.input_size}, patch {c.patch_size}.")


class SupernetTarget:
    """Accuracy with inherited weights (+ optional fine-tuning), cost and capacity of one path."""

    kind = "supernet"

    def __init__(self, settings: SearchSettings):
        from pathnas.data import build_loaders
        from pathnas.train import load_supernet, primary_metric
        from pathnas.train.distributed import resolve_device

        self.settings = settings
        self.device = resolve_device(settings.torch_device)
        self.supernet, self.checkpoint = load_supernet(settings.supernet)
        self.supernet.to(self.device).eval()
        config = self.supernet.config
        if settings.space and settings.space != config.space:
            raise ConfigError(f"--space {settings.space} but {settings.supernet} is a {config.space} supernet")
        self.data = build_loaders(settings.data, config.input_size, settings.batch_size, seed=settings.seed,
                                  skip_bad=settings.skip_bad)
        if self.data.num_classes != config.num_classes:
            raise ConfigError(f"{settings.data} has {self.data.num_classes} classes; the supernet was trained for "
                              f"{config.num_classes}")
        if self.data.skipped:
            log.warning("skipped %d unreadable file(s) (--skip-bad); they are listed in %s", len(self.data.skipped),
                        Path(settings.data) / SPLITS_FILE)
        self.calibration = calibration_batches(self.data.calib, settings.bn_images)
        self.space = self.supernet.space
        self.metric_name = primary_metric(self.supernet.task)
        self.latency_subject = self.supernet
        self._cost: dict[str, tuple[int, int]] = {}
        self._part_cost: dict[str, tuple[int, int]] | None = None
        self._members: list[Architecture] | None | bool = False

    def known(self, arch: Architecture) -> bool:
        return True

    def problem(self, arch: Architecture) -> str | None:
        return None

    def cost(self, arch: Architecture) -> tuple[int, int]:
        """fvcore FLOPs and params of the extracted path (exact; about 0.1 s, then cached)."""
        from pathnas.cost import measure_cost

        if arch.code not in self._cost:
            c = measure_cost(self.supernet.extract(arch), tuple(self.supernet.example_input().shape))
            self._cost[arch.code] = (c.flops, c.params)
        return self._cost[arch.code]

    def capacity(self, arch: Architecture) -> tuple[float, float]:
        """FLOPs and params as the sum of the parts the path selects (each part counted once by fvcore):
        equal to ``cost`` for ShuffleNet and ViT paths and a hair under it for U-Net, at no cost per path."""
        from pathnas.cost import measure_cost

        if self._part_cost is None:
            self._parts = self.supernet.latency_parts()
            self._part_cost = {}
            for part in self._parts:
                if part.key not in self._part_cost:
                    c = measure_cost(part.build(), tuple(part.input_shape))
                    self._part_cost[part.key] = (c.flops, c.params)
        chosen = [self._part_cost[p.key] for p in self.supernet.parts_for(arch, self._parts)]
        return float(sum(c[0] for c in chosen)), float(sum(c[1] for c in chosen))

    def members(self) -> list[Architecture] | None:
        if self._members is False:
            self._members = enumerate_space(self.space)
        return self._members

    def evaluate(self, arch: Architecture) -> dict:
        from pathnas.train import evaluate_architecture

        s = self.settings
        if s.finetune_epochs:
            metrics = self._finetuned(arch)
        else:
            metrics = evaluate_architecture(self.supernet, arch, self.calibration, self.data.val,
                                            self.data.num_classes, self.device, s.bn_images)
        return {"metric": metrics[self.metric_name], "metrics": metrics, "finetune_epochs": s.finetune_epochs}

    def _finetuned(self, arch: Architecture) -> dict:
        from pathnas.train import finetune_architecture

        s = self.settings
        return finetune_architecture(self.supernet, arch, self.calibration, self.data.train, self.data.val,
                                     self.data.num_classes, self.device, s.bn_images, s.finetune_epochs,
                                     s.batch_size, s.seed)

    def prompt_facts(self) -> dict:
        task = "classification" if self.supernet.task == "classify" else "segmentation"
        return {"task": f"a {task} model on pathology images",
                "dataset": describe_dataset(self.data, self.settings.data),
                "space_notes": space_notes(self.supernet), "has_inactive": self.supernet.config.space == "vit"}

    def identity(self) -> dict:
        """What the recorded accuracies depend on (a resume with anything else is refused)."""
        from pathnas.data import data_fingerprint

        s = self.settings
        return {"kind": self.kind, "space": self.supernet.config.space,
                "space_config": self.supernet.config.model_dump(mode="json"),
                "supernet_sha256": sha256_file(s.supernet), "data": data_fingerprint(s.data),
                "bn_images": s.bn_images, "batch_size": s.batch_size, "finetune_epochs": s.finetune_epochs,
                "seed": s.seed, "skip_bad": s.skip_bad, "torch_device": self.device.type}

    def describe(self) -> dict:
        return {"kind": self.kind, "space": self.supernet.config.space, "supernet": str(self.settings.supernet),
                "data": str(self.settings.data)}

    def best_extras(self, record: dict) -> dict:
        return {}

    def summary_fields(self) -> dict:
        """Fields the summary has always carried for a supernet search (extract reads space_config)."""
        return {"space_config": self.supernet.config.model_dump(mode="json"), "supernet": str(self.settings.supernet),
                "classes": self.checkpoint.get("classes"), "data": str(self.settings.data)}
