"""Validated settings of the training and search stages (pydantic). Torch-free.

Every default lives here once: the stage functions use these models, and the CLI reads its
option defaults and help from them, so a default is never declared twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

SPACES = ("shufflenet", "unet", "vit")  # the supernet spaces (pathnas.spaces.SUPERNETS), named without importing torch
# The offline default is "prior-bo"; "auto" picks an LLM when one is configured, else prior-bo.
PROPOSERS = ("llm", "llm-rank", "prior-bo", "evolution", "random", "auto")


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

    # Where things are and where they run: a run may be resumed after changing these (a moved data set
    # or run directory, another machine); every other field shapes the result and may not change.
    LOGISTICS: ClassVar[frozenset[str]] = frozenset({"data", "run_dir", "device", "workers"})

    def result_settings(self) -> dict:
        """The settings that shape a run's result, as JSON (checkpoints refuse to resume with others)."""
        return self.model_dump(mode="json", exclude=set(self.LOGISTICS))


class PretrainConfig(OptimConfig):
    """Supernet pretraining settings; ``batch_size`` is per process (global batch = batch_size x world size)."""

    data: Path
    run_dir: Path
    eval_paths: int = Field(2, ge=0, description="random paths evaluated on val after every epoch")
    bn_images: int = Field(256, ge=0, description="training images for BN recalibration before evaluation")
    workers: int = Field(2, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    skip_bad: bool = Field(False, description="skip unreadable images (listed in splits.json) and report how many")


class RetrainConfig(OptimConfig):
    data: Path
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.02, gt=0)
    from_scratch: bool = False
    bn_images: int = Field(256, ge=0)
    workers: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    skip_bad: bool = Field(False, description="skip unreadable images (listed in splits.json) and report how many")


class SearchSettings(BaseModel):
    """One search: a pretrained supernet (spaces shufflenet, unet, vit) or a tabular benchmark (nb201).

    The two kinds share the proposers, budgets, LLM options, run directory, resume and replay;
    the options of one kind are refused for the other, naming the option.
    """

    model_config = ConfigDict(extra="forbid")

    # Tabular spaces: accuracy, FLOPs, params and device latency are columns of a benchmark file.
    TABULAR_SPACES: ClassVar[tuple[str, ...]] = ("nb201",)
    # Options that only mean something for a supernet search (the tabular kind looks everything up).
    SUPERNET_ONLY: ClassVar[tuple[str, ...]] = (
        "supernet", "data", "finetune_epochs", "bn_images", "batch_size", "latency_source", "latency_table",
        "measure_local", "torch_device", "skip_bad")
    TABULAR_ONLY: ClassVar[tuple[str, ...]] = ("benchmark", "dataset")

    device: str = Field(description="supernet spaces: a hardware profile (name or alias, e.g. jetson, cpu); "
                                    "tabular spaces: the benchmark's latency column lat_ms_<device>")
    run_dir: Path
    space: str | None = Field(None, description="shufflenet, unet or vit (must agree with --supernet; read from it "
                                                "when left out), or a tabular space: nb201")
    supernet: Path | None = Field(None, description="supernet spaces: the pretrained supernet checkpoint")
    data: Path | None = Field(None, description="supernet spaces: the data set (its saved splits are reused)")
    benchmark: Path | None = Field(None, description="tabular spaces: the benchmark file (CSV, may be gzipped)")
    dataset: str | None = Field(None, description="tabular spaces: accuracy columns <dataset>_val (searched) and "
                                                  "<dataset>_test (reported for the best)")
    budget_ms: float | None = Field(None, gt=0, description="latency budget on the device, ms per image")
    budget_mflops: float | None = Field(None, gt=0, description="FLOPs budget in MFLOPs (multiply-adds)")
    iterations: int = Field(10, ge=1, description="evaluations in all (a resumed search counts those done)")
    proposer: Literal["llm", "llm-rank", "prior-bo", "evolution", "random", "auto"] = Field(
        "auto", description="llm, llm-rank, prior-bo (offline default), evolution, random, or auto: an LLM when one "
                            "is configured, else prior-bo")
    llm_model: str = "gpt-4o"
    llm_base_url: str | None = Field(None, description="OpenAI-compatible server (overrides OPENAI_BASE_URL)")
    temperature: float = Field(0.0, ge=0, le=2)
    prompt: Literal["expert", "generic", "none"] = Field("expert", description="system prompt: expert, generic or none")
    llm_timeout_s: float = Field(60.0, gt=0, description="seconds per LLM request")
    llm_retries: int = Field(4, ge=0, description="retries of a failed LLM request (network, server error, a "
                                                  "response that is not a chat completion)")
    llm_backoff_s: float = Field(1.0, ge=0, description="first retry delay, s; doubles each retry (Retry-After wins)")
    finetune_epochs: int = Field(0, ge=0, description="fine-tune each path N epochs before evaluating (the paper: 20)")
    bn_images: int = Field(256, ge=0, description="training images for each path's BN recalibration (the same "
                                                  "images for every path)")
    batch_size: int = Field(64, ge=1)
    latency_source: Literal["table", "roofline"] = Field(
        "table", description="table (measured on the device) or roofline (an estimate)")
    latency_table: Path | None = Field(None, description="an explicit latency table file")
    measure_local: bool = Field(True, description="also measure latency when the device is this machine")
    skip_bad: bool = Field(False, description="skip unreadable images (listed in splits.json) and report how many")
    resume: bool = False
    replay: Path | None = Field(None, description="replay the LLM replies of a transcript (no network)")
    seed: int = 0
    torch_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where evaluation runs")

    @property
    def tabular(self) -> bool:
        return self.space in self.TABULAR_SPACES

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchSettings":
        """Each kind's required options, and none of the other kind's (the error names the option)."""
        def refuse(field: str, message: str):
            raise ValidationError.from_exception_data(type(self).__name__, [InitErrorDetails(
                type=PydanticCustomError("search_kind", message), loc=(field,), input=getattr(self, field))])

        kinds = f"supernet spaces: {', '.join(SPACES)}; tabular spaces: {', '.join(self.TABULAR_SPACES)}"
        if self.space is not None and self.space not in SPACES + self.TABULAR_SPACES:
            refuse("space", f"unknown space {self.space!r} ({kinds})")
        if self.tabular:
            for field in ("benchmark", "dataset"):
                if getattr(self, field) is None:
                    refuse(field, f"--space {self.space} is a tabular space: give --{field.replace('_', '-')}")
            defaults = type(self).model_fields
            for field in self.SUPERNET_ONLY:
                if getattr(self, field) != defaults[field].default:
                    refuse(field, f"applies to supernet spaces only ({', '.join(SPACES)}); --space {self.space} "
                                  f"is a tabular benchmark")
            return self
        for field in self.TABULAR_ONLY:
            if getattr(self, field) is not None:
                refuse(field, f"applies to tabular spaces only (--space {', '.join(self.TABULAR_SPACES)})")
        for field in ("supernet", "data"):
            if getattr(self, field) is None:
                refuse(field, f"a supernet search needs --{field} (or --space "
                              f"{' / '.join(self.TABULAR_SPACES)} with --benchmark and --dataset)")
        return self
