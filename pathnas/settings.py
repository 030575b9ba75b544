"""Validated settings of the training and search stages (pydantic). Torch-free.

Every default lives here once: the stage functions use these models, and the CLI reads its
option defaults and help from them, so a default is never declared twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pathnas.deploy.runtimes import FORMATS, PRECISIONS
from pathnas.errors import ConfigError

SPACES = ("shufflenet", "unet", "vit")  # the supernet spaces (pathnas.spaces.SUPERNETS), named without importing torch

# The proposers, named once: the CLI's allowed values and help come from here, and
# pathnas.search.factory builds one for each name (a test checks the two agree).
PROPOSERS: dict[str, str] = {
    "llm": "the Pathology-NAS loop: an LLM proposes from the history",
    "llm-rank": "LM-Searcher: an LLM picks among feasible candidates shown as NCodes",
    "prior-bo": "prior-guided Bayesian optimisation, the offline default",
    "evolution": "population 50, then children of the top 10",
    "random": "random feasible paths",
    "auto": "an LLM when one is configured, else prior-bo",
}
OFFLINE_PROPOSER = "prior-bo"
ProposerName = Literal[tuple(PROPOSERS)]  # type: ignore[valid-type]
PROPOSER_HELP = "; ".join(f"{name}: {text}" for name, text in PROPOSERS.items())

# The kinds of LLM server the client knows (pathnas.search.llm asks each for structured output in its own form
# and reads its context length); "auto" detects the kind from what the server answers.
LLM_SERVERS = ("openai", "vllm", "llamacpp", "ollama")

# Export formats and precisions come from the runtime registry (pathnas.deploy.runtimes): FORMATS, PRECISIONS.


def validated(model: type[BaseModel], what: str | None = None, **values):
    """``model(**values)``, or one ConfigError naming each option at fault (``--batch-size: ...``) and the
    allowed values, instead of pydantic's report."""
    try:
        return model(**values)
    except ValidationError as err:
        raise config_error(err, f"{what} settings" if what else "settings") from None


def config_error(err: ValidationError, what: str, name=None, model: type[BaseModel] | None = None) -> ConfigError:
    """The one place a pydantic ValidationError becomes a user error: a line per field at fault, named by
    ``name(loc)`` (default: as the option that sets it); an unknown key lists ``model``'s fields."""
    name = name or option_name
    lines = [f"{name(e['loc'])}: unknown key (allowed: {', '.join(model.model_fields)})"
             if model is not None and e["type"] == "extra_forbidden" else f"{name(e['loc'])}: {e['msg']}"
             for e in err.errors()]
    return ConfigError(f"invalid {what}:\n  " + "\n  ".join(lines))


def option_name(loc: tuple) -> str:
    """A settings field as the option that sets it: ``batch_size`` -> ``--batch-size``."""
    return "--" + ".".join(map(str, loc)).replace("_", "-") if loc else "settings"


class SupernetChoice(BaseModel):
    """Which supernet a command is about: a pretrained checkpoint (its configuration fixed), or a space
    and its knobs."""

    model_config = ConfigDict(extra="forbid")

    space: str | None = Field(None, description=f"search space: {', '.join(SPACES)}")
    supernet: Path | None = Field(None, description="a pretrained supernet checkpoint (fixes the configuration)")
    input_size: int | None = Field(None, ge=8, description="input side in pixels (default: the space's)")
    width_mult: float | None = Field(None, gt=0, description="channel width multiplier (default: the space's)")
    num_classes: int | None = Field(None, ge=2, description="classes (default: the space's)")
    option: list[str] = Field(default_factory=list, description="extra space knob KEY=VALUE (repeatable), e.g. "
                                                                "embed_dim=192 for vit")


class RemoteDevice(BaseModel):
    """A device reached over SSH for its half of a latency measurement (nothing is exported for it until
    it answers and has pathnas-infer)."""

    model_config = ConfigDict(extra="forbid")

    remote: str | None = Field(None, description="time on this device over SSH ([user@]host, as ssh takes it); "
                                                 "pathnas-infer must be installed there")
    ssh_config: Path | None = Field(None, description="an ssh_config file for --remote (default: yours)")
    remote_infer: str = Field("pathnas-infer", description="the pathnas-infer command on the remote device")


class CalibrationSettings(BaseModel):
    """INT8 calibration and accuracy control (export/quantize.py:quantize_run); the quantize stage records them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calibration_images: int = Field(512, ge=1, description="TRAIN images the INT8 ranges are calibrated on")
    keep_float: list[str] = Field(default_factory=list, description="keep this layer (ONNX node name) in float; "
                                                                    "repeatable")
    reduce_range: bool = Field(True, description="7-bit weights (safe on AVX2-only CPUs, which saturate 8-bit ones); "
                                                 "--full-range-weights: 8-bit (VNNI CPUs and GPUs)")
    accuracy_control: bool = Field(True, description="keep the most sensitive layers in float until INT8 meets the "
                                                     "thresholds on val")


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
    sampler: Literal["uniform", "fair", "balanced"] = Field(
        "uniform", description="uniform: one random path per step (SPOS); fair: every choice of every layer "
                               "once per step, gradients accumulated (FairNAS); balanced: one path per step whose "
                               "number of 'id' layers is uniform (skip-heavy paths trained as often as deep ones)")


class RetrainConfig(OptimConfig):
    data: Path = Field(description="the data set (its saved splits are reused)")
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.02, gt=0)
    from_scratch: bool = Field(False, description="start from fresh weights, not the inherited ones")
    bn_images: int = Field(256, ge=0)
    workers: int = Field(0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs")
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
        "measure_local", "reanchor", "torch_device", "skip_bad")
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
    proposer: ProposerName = Field("auto", description=PROPOSER_HELP)
    llm_model: str = "gpt-4o"
    llm_base_url: str | None = Field(None, description="OpenAI-compatible server (overrides OPENAI_BASE_URL)")
    llm_server: Literal[("auto",) + LLM_SERVERS] = Field(  # type: ignore[valid-type]
        "auto", description="the server's kind, which sets how structured output is asked and where the context "
                            "length is read: auto (detected from the server's answers), " + ", ".join(LLM_SERVERS))
    llm_context: int | None = Field(None, ge=512, description="the model's context in tokens where the server does "
                                                              "not say (a longer prompt drops old history rows)")
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
    reanchor: bool = Field(False, description="scale the latency table by the reference model's time now / then "
                                              "(timed here at the start; recorded in the run, reused by "
                                              "--resume and --replay)")
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


# The embedded default: CPU-sized, learns on the synthetic data in a few minutes on 2 cores. The paper's
# ShuffleNet supernet at 32 px: the stem and four stride-2 stages take it to 16, 8, 4, 2 and 1 px.
DEMO_SPACE = {"space": "shufflenet", "input_size": 32, "width_mult": 0.5, "stage_repeats": [1, 1, 2, 1]}
DEMO_DATA = {"n_per_class": 200, "image_size": 64}


def parse_choices(value, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """A comma-separated string or a sequence, every item one of ``allowed`` (case-insensitive), each once;
    a ConfigError (a ValueError, so pydantic validators report it too) listing the allowed values otherwise."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ConfigError(f"{what} {', '.join(map(repr, bad)) or '(none)'}: allowed values are {', '.join(allowed)} "
                          f"(comma-separated)")
    return tuple(dict.fromkeys(items))


class PipelineSettings(BaseModel):
    """One `pathnas-edge pipeline`: data -> supernet -> latency table -> search -> extract -> retrain ->
    export (+ quantize) -> validate -> bundle. The defaults are the embedded demo, sized for a CPU;
    the training settings here are the pipeline's own (smaller batch, no mixing) and override those of
    PretrainConfig / RetrainConfig, which the stage commands use."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="your data set (default: the synthetic histology set)")
    slides: Path | None = Field(None, description="a folder of whole-slide images, cut into RUN/tiles by their "
                                                  "--annotations first (instead of --data)")
    annotations: Path | None = Field(None, description="with --slides: a folder of their annotations (QuPath "
                                                       "GeoJSON, ASAP or ImageScope XML), paired by file name")
    mpp: float = Field(0.5, gt=0, description="with --slides: microns per pixel the model is trained at (0.5: 20x)")
    label_rule: Literal["centroid", "majority", "exclude-mixed"] = Field(
        "centroid", description="with --slides: a tile's class is the one under its centre, the one covering most "
                                "of it, or the only one touching it (see `data tiles`)")
    classes: str | None = Field(None, description="with --slides: the classes to learn, comma-separated, earlier ones "
                                                  "owning overlaps (default: every class the annotations use, sorted)")
    device: str = Field("cpu", description="target hardware profile (name or alias, e.g. jetson, cpu)")
    space: dict = Field(default_factory=lambda: dict(DEMO_SPACE),
                        description="the space and its knobs (default: the paper's ShuffleNet at 32 px, width 0.5)")
    proposer: ProposerName = Field("auto", description=PROPOSER_HELP)
    iterations: int = Field(10, ge=1, description="architectures evaluated by the search")
    budget_ms: float | None = Field(None, gt=0, description="latency budget on the device, ms per image")
    budget_mflops: float | None = Field(None, gt=0, description="FLOPs budget in MFLOPs (multiply-adds)")
    pretrain_epochs: int = Field(20, ge=1, description="supernet pretraining epochs")
    sampler: Literal["uniform", "fair", "balanced"] = Field("uniform", description="supernet path sampling (see "
                                                                                   "PretrainConfig)")
    retrain_epochs: int = Field(10, ge=1, description="retraining epochs of the chosen path")
    batch_size: int = Field(32, ge=2, description="training batch of pretraining and retraining")
    pretrain_lr: float = Field(0.02, gt=0, description="supernet learning rate")
    retrain_lr: float = Field(0.01, gt=0, description="retraining learning rate (no warm-up: it starts from the "
                                                      "inherited weights)")
    mixup: bool = Field(False, description="timm mixup/cutmix in pretraining and retraining (off: on a few hundred "
                                           "images per class the demo learns faster without)")
    formats: tuple[str, ...] = Field(FORMATS, description=f"comma-separated: {', '.join(FORMATS)}")
    precisions: tuple[str, ...] | None = Field(
        None, description=f"comma-separated: {', '.join(PRECISIONS)} (default: FP32 plus the device profile's)")
    seed: int = 0
    skip_bad: bool = Field(False, description="skip unreadable images (listed in splits.json) and report how many")
    pack_data: bool = Field(True, description="decode the data set once into RUN/pack, which pretraining, the search "
                                              "and retraining read (several times the images/s of decoding files "
                                              "every epoch: benchmarks/loader_throughput.py)")
    sign_key: Path | None = Field(None, description="sign the bundle's manifest with this private key "
                                                    "(`pathnas-edge keys new`)")

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, value):
        return parse_choices(value, FORMATS, "format")

    @field_validator("precisions", mode="before")
    @classmethod
    def _precisions(cls, value):
        return None if value in (None, "auto") else parse_choices(value, PRECISIONS, "precision")

    def pretrain_config(self, data: Path, run_dir: Path) -> "PretrainConfig":
        return validated(PretrainConfig, "pretraining", data=data, run_dir=run_dir, epochs=self.pretrain_epochs,
                         sampler=self.sampler, batch_size=self.batch_size, lr=self.pretrain_lr, workers=0, seed=self.seed,
                         skip_bad=self.skip_bad, **self._mixing(PretrainConfig))

    def retrain_config(self, data: Path) -> "RetrainConfig":
        return validated(RetrainConfig, "retraining", data=data, epochs=self.retrain_epochs,
                         batch_size=self.batch_size, lr=self.retrain_lr, warmup_epochs=0, seed=self.seed,
                         skip_bad=self.skip_bad, **self._mixing(RetrainConfig))

    def search_settings(self, data: Path, supernet: Path, run_dir: Path) -> "SearchSettings":
        return validated(SearchSettings, "search", device=self.device, supernet=supernet, data=data,
                         run_dir=run_dir, budget_ms=self.budget_ms, budget_mflops=self.budget_mflops,
                         iterations=self.iterations, proposer=self.proposer, seed=self.seed,
                         skip_bad=self.skip_bad, resume=True)

    def _mixing(self, model: type[BaseModel]) -> dict:
        if self.mixup:
            return {k: model.model_fields[k].default for k in ("mixup_alpha", "cutmix_alpha")}
        return {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}
