"""Evaluation of standalone models and of supernet paths with inherited weights.

A path's BatchNorm statistics in a SPOS supernet are a mixture over every path
trained through those layers, so a subnet evaluated with inherited weights first gets
its BN statistics recalibrated on a few hundred training images (as OFA and SPOS do).
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..spaces import Architecture, Supernet


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_images: int, device: torch.device) -> int:
    """Reset BN running statistics and re-estimate them as a cumulative average.

    Returns the number of images used (0 when the model has no BatchNorm, e.g. a ViT).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_images <= 0:
        return 0
    saved_momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    seen = 0
    try:
        for images, _ in loader:
            images = images[: num_images - seen].to(device, non_blocking=True)
            model(images)
            seen += images.shape[0]
            if seen >= num_images:
                break
    finally:
        for bn, momentum in zip(bns, saved_momentum):
            bn.momentum = momentum
        model.train(was_training)
    return seen


class MetricAccumulator:
    """Task metrics in percent: top-1 for classification; Dice, IoU and pixel accuracy for segmentation."""

    def __init__(self, task: str, num_classes: int):
        self.task = task
        self.num_classes = num_classes
        self.count = 0
        self.correct = 0.0
        self.loss_sum = 0.0
        # per-class intersection / prediction / target pixel counts (segmentation)
        self.inter = torch.zeros(num_classes, dtype=torch.float64)
        self.pred = torch.zeros(num_classes, dtype=torch.float64)
        self.true = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        self.loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        pred = logits.argmax(dim=1)
        self.correct += float((pred == target).sum())
        self.count += target.numel()
        if self.task == "segment":
            for c in range(self.num_classes):
                p, t = pred == c, target == c
                self.inter[c] += float((p & t).sum())
                self.pred[c] += float(p.sum())
                self.true[c] += float(t.sum())

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ConfigError("no images were evaluated (is the split empty?)")
        out = {"loss": self.loss_sum / self.count}
        if self.task == "classify":
            out["top1_pct"] = 100.0 * self.correct / self.count
            return out
        fg = slice(1, self.num_classes)  # background excluded, as is usual for Dice in pathology
        dice = 2 * self.inter[fg] / (self.pred[fg] + self.true[fg]).clamp(min=1)
        iou = self.inter[fg] / (self.pred[fg] + self.true[fg] - self.inter[fg]).clamp(min=1)
        out.update(
            dice_pct=100.0 * float(dice.mean()),
            iou_pct=100.0 * float(iou.mean()),
            pixel_acc_pct=100.0 * self.correct / self.count,
        )
        return out


def primary_metric(task: str) -> str:
    return "top1_pct" if task == "classify" else "dice_pct"


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, task: str, num_classes: int, device: torch.device,
    max_batches: int | None = None,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(task, num_classes)
    try:
        for images, target in itertools.islice(loader, max_batches):
            acc.update(model(images.to(device)), target)
    finally:
        model.train(was_training)
    return acc.result()


def evaluate_architecture(
    supernet: Supernet,
    arch: Architecture | str,
    calib_loader: Iterable,
    val_loader: Iterable,
    num_classes: int,
    device: torch.device,
    bn_images: int = 256,
) -> dict[str, float]:
    """Inherited weights + BN recalibration -> validation metrics of one path.

    Works on the extracted copy, so the supernet itself is never modified.
    """
    subnet = supernet.extract(arch).to(device)
    used = recalibrate_bn(subnet, calib_loader, bn_images, device)
    metrics = evaluate(subnet, val_loader, supernet.task, num_classes, device)
    metrics["bn_images"] = used
    return metrics


def finetune_architecture(
    supernet: Supernet,
    arch: Architecture | str,
    calib_loader: Iterable,
    train_loader,
    val_loader: Iterable,
    num_classes: int,
    device: torch.device,
    bn_images: int,
    epochs: int,
    batch_size: int,
    seed: int,
    lr: float = 0.01,
) -> dict[str, float]:
    """Inherited weights, BN recalibrated, then ``epochs`` of training of the path alone, then validation
    metrics: the evaluation that does not take inherited weights as they are (Pathology-NAS fine-tunes each
    path 20 epochs). Works on the extracted copy; the random streams are a function of (seed, path)."""
    from .distributed import DistContext
    from .loop import build_training, train_epoch
    from .rng import seed_everything
    from ..settings import OptimConfig

    seed_everything(seed, "search-finetune", supernet.check(arch).code)  # a function of the path, not its turn
    subnet = supernet.extract(arch).to(device)
    recalibrate_bn(subnet, calib_loader, bn_images, device)
    cfg = OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_epochs=0, mixup_alpha=0, cutmix_alpha=0)
    parts = build_training(subnet, supernet.task, num_classes, cfg, len(train_loader), device)
    ctx = DistContext(0, 1, 0, device)
    for epoch in range(cfg.epochs):  # train_epoch moves the loader to this epoch's order and augmentation
        subnet.train()
        train_epoch(lambda x, _step: subnet(x), train_loader, parts, epoch, ctx)
    return evaluate(subnet, val_loader, supernet.task, num_classes, device)
