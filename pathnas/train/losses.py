"""Segmentation loss (Dice + cross-entropy). Classification uses timm's SoftTargetCrossEntropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DiceCELoss(nn.Module):
    """Soft Dice over the foreground classes (the paper's eq. 12, squared denominators) plus CE."""

    def __init__(self, ce_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.ce_weight = ce_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
        dims = (0, 2, 3)
        inter = (probs * one_hot).sum(dims)
        denom = (probs * probs).sum(dims) + (one_hot * one_hot).sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        dice_loss = 1 - dice[1:].mean()  # background excluded: it would dominate
        return dice_loss + self.ce_weight * F.cross_entropy(logits.float(), target)
