"""Supernet pretraining, evaluation with inherited weights, losses and DDP plumbing."""
from ..settings import OptimConfig, PretrainConfig
from .loop import TrainingParts, build_training, train_epoch
from .evaluate import (MetricAccumulator, evaluate, evaluate_architecture, finetune_architecture, primary_metric,
                       recalibrate_bn)
from .spos import PretrainResult, load_supernet, path_generator, pretrain

__all__ = [
    "OptimConfig", "TrainingParts", "build_training", "train_epoch",
    "MetricAccumulator", "evaluate", "evaluate_architecture", "finetune_architecture", "primary_metric", "recalibrate_bn",
    "PretrainConfig", "PretrainResult", "load_supernet", "path_generator", "pretrain",
]
