"""Validated settings of the training and search stages (pydantic). Torch-free.

Every default lives here once: the stage functions use these models, and the CLI reads its
option defaults and help from them, so a default is never declared twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SPACES = ("shufflenet", "unet", "vit")  # the supernet spaces (pathnas.spaces.SUPERNETS), named without importing torch
PROPOSERS = ("llm", "llm-rank", "evolution", "random", "auto")


class OptimConfig(BaseModel):
    """Optimisation settings shared by pretraining, fine-tuning and retraining."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=2, description="per process")
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    mixup_alpha: float = Field(0.8, ge=0, description="timm Mixup; 0 with cutmix_alpha 0 turns mixing off")
    cutmix_alpha: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where supported, else fp16)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (smoke runs)")


class PretrainConfig(OptimConfig):
    """Supernet pretraining settings; ``batch_size`` is per process (global batch = batch_size x world size)."""

    data: Path
    run_dir: Path
    eval_paths: int = Field(2, ge=0, description="random paths evaluated on val after every epoch")
    bn_images: int = Field(256, ge=0, description="training images for BN recalibration before evaluation")
    workers: int = Field(2, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    skip_bad: bool = False


class RetrainConfig(OptimConfig):
    data: Path
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.02, gt=0)
    from_scratch: bool = False
    bn_images: int = Field(256, ge=0)
    workers: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SearchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    supernet: Path
    data: Path
    run_dir: Path
    space: str | None = Field(None, description="must agree with the supernet checkpoint when given")
    budget_ms: float | None = Field(None, gt=0)
    budget_mflops: float | None = Field(None, gt=0)
    iterations: int = Field(10, ge=1)
    proposer: Literal["llm", "llm-rank", "evolution", "random", "auto"] = "auto"
    llm_model: str = "gpt-4o"
    llm_base_url: str | None = None
    temperature: float = Field(0.0, ge=0, le=2)
    prompt: Literal["expert", "generic", "none"] = "expert"
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_retries: int = Field(4, ge=0)
    llm_backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry (Retry-After wins)")
    finetune_epochs: int = Field(0, ge=0)
    bn_images: int = Field(256, ge=0)
    batch_size: int = Field(64, ge=1)
    latency_source: Literal["table", "roofline"] = "table"
    latency_table: Path | None = None
    measure_local: bool = Field(True, description="also measure latency when the device is this machine")
    resume: bool = False
    replay: Path | None = None
    seed: int = 0
    torch_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where evaluation runs")
