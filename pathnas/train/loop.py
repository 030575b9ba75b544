"""The one training loop: optimiser, schedule, mixup, loss, AMP and an epoch of steps.

Supernet pretraining, search-time fine-tuning and standalone retraining all build
their training parts here and run ``train_epoch``; they differ only in the forward
function (a supernet forward on a sampled path, or a plain model).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..data import set_epoch
from ..errors import ConfigError
from ..settings import OptimConfig
from .distributed import DistContext, all_reduce_sum
from .losses import DiceCELoss


@dataclass
class TrainingParts:
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mixup: Mixup | None
    amp_dtype: torch.dtype | None
    steps_per_epoch: int

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in ("optimizer", "scheduler", "scaler")}

    def load_state_dict(self, state: dict) -> None:
        for k in ("optimizer", "scheduler", "scaler"):
            getattr(self, k).load_state_dict(state[k])


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_training(
    model: nn.Module, task: str, num_classes: int, cfg: OptimConfig, batches_per_epoch: int, device: torch.device
) -> TrainingParts:
    """SGD (timm, nesterov) with linear warm-up and cosine decay per step; mixup + soft-target CE
    for classification, Dice + CE for segmentation."""
    steps = min(batches_per_epoch, cfg.max_steps_per_epoch or batches_per_epoch)
    if steps == 0:
        raise ConfigError(f"the training split has fewer images than one batch ({cfg.batch_size} per process)")
    optimizer = create_optimizer_v2(model, "sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=cfg.epochs * steps, lr_min=cfg.lr * 1e-3,
        warmup_t=int(cfg.warmup_epochs * steps), warmup_lr_init=cfg.lr * 1e-2, warmup_prefix=True, t_in_epochs=False,
    )
    amp_dtype = amp_dtype_for(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    mixup = None
    if task == "classify":
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            if cfg.batch_size % 2:
                raise ConfigError(f"batch_size {cfg.batch_size} must be even for mixup/cutmix")
            mixup = Mixup(
                mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                label_smoothing=cfg.label_smoothing, num_classes=num_classes,
            )
        # Mixup makes soft targets; without it the labels stay hard.
        criterion: nn.Module = (
            SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(cfg.label_smoothing)
        )
    else:
        criterion = DiceCELoss()
    return TrainingParts(optimizer, scheduler, scaler, criterion, mixup, amp_dtype, steps)


def train_epoch(
    forward: Callable[..., torch.Tensor],
    loader: Iterable,
    parts: TrainingParts,
    epoch: int,
    ctx: DistContext,
    progress=None,
    description: str = "",
    passes: int = 1,
    no_sync: Callable[[], ContextManager] | None = None,
) -> dict:
    """One epoch. ``forward(images, step)`` returns logits (the supernet picks its path from ``step``).

    With ``passes`` > 1 (fair sampling) every batch goes through ``forward(images, step, k)`` for
    k = 0..passes-1, each pass's gradients are added up and the optimiser steps once (FairNAS sums,
    not averages: each choice of a layer is in exactly one pass, so its gradient keeps the scale of a
    single-path step). ``no_sync`` (DDP's) skips the gradient all-reduce of every pass but the last.
    A loader whose data set has a ``device_transform`` (packed shards) hands over uint8 batches that
    are augmented and normalised here, on the training device.
    """
    if hasattr(loader, "sampler"):  # a DataLoader of build_loaders: this epoch's order and augmentation
        set_epoch(loader, epoch)
    device_transform = getattr(getattr(loader, "dataset", None), "device_transform", None)
    task_id = progress.add_task(description, total=parts.steps_per_epoch) if progress else None
    loss_sum, images, start = 0.0, 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        if step >= parts.steps_per_epoch:
            break
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        if device_transform is not None:
            x, y = device_transform(x, y, epoch, step, ctx.rank)
        if parts.mixup is not None:
            x, y = parts.mixup(x, y)
        parts.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for k in range(passes):
            last = k == passes - 1
            with (nullcontext() if last or no_sync is None else no_sync()):
                with torch.autocast(ctx.device.type, dtype=parts.amp_dtype, enabled=parts.amp_dtype is not None):
                    loss = parts.criterion(forward(x, step) if passes == 1 else forward(x, step, k), y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1} step {step}")
                parts.scaler.scale(loss).backward()
            loss_value += loss.item() / passes
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step_update(epoch * parts.steps_per_epoch + step + 1)
        loss_sum += loss_value * x.shape[0]
        images += x.shape[0]
        if progress:
            progress.update(task_id, advance=1, description=f"{description} loss {loss_value:.3f}")
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start
    if progress:
        progress.remove_task(task_id)
    total_images = all_reduce_sum(images, ctx)
    return {
        "train_loss": all_reduce_sum(loss_sum, ctx) / max(total_images, 1),
        "train_images_per_s": total_images / seconds,
        "lr": parts.optimizer.param_groups[0]["lr"],
    }
