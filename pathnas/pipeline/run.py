"""`pathnas-edge pipeline`: every stage in one run directory, on the embedded default unless told otherwise.

Every setting is checked before the first stage runs (a misspelt device must not cost a whole
pretraining), and the pipeline holds the run directory's lock from start to end: a second
pipeline on the same directory refuses at once, naming this one's process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pathnas.errors import ConfigError
from pathnas.io import read_json, write_json_atomic
from pathnas.lock import RunLock
from pathnas.settings import PretrainConfig, RetrainConfig, SearchSettings

from . import stages
from .layout import RunLayout

# The embedded default: CPU-sized, learns on the synthetic data in a few minutes on 2 cores. The paper's
# ShuffleNet supernet at 32 px: the stem and four stride-2 stages take it to 16, 8, 4, 2 and 1 px.
DEMO_SPACE = {"space": "shufflenet", "input_size": 32, "width_mult": 0.5, "stage_repeats": [1, 1, 2, 1]}
DEMO_DATA = {"n_per_class": 200, "image_size": 64}


@dataclass(frozen=True)
class _Plan:
    """Everything the stages need, validated before the first one runs."""

    profile: Any
    space: Any  # the space configuration
    pretrain: PretrainConfig
    search: SearchSettings
    retrain: RetrainConfig
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    sign_key: Path | None


def _settings(model: type[BaseModel], what: str, **values) -> Any:
    try:
        return model(**values)
    except ValidationError as err:
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"invalid {what} settings:\n  " + "\n  ".join(lines)) from None


def _plan(layout: RunLayout, data: Path, demo_data: bool, device: str, proposer: str, iterations: int,
          budget_ms: float | None, budget_mflops: float | None, pretrain_epochs: int, retrain_epochs: int,
          formats: tuple[str, ...], precisions: tuple[str, ...] | None, seed: int, space: dict,
          skip_bad: bool, sign_key: Path | None) -> _Plan:
    from pathnas.data import CLASSES, detect_task, list_classes, segmentation_classes
    from pathnas.export.artifacts import FORMATS, PRECISIONS
    from pathnas.profiling import load_profile
    from pathnas.spaces import SUPERNETS, build_supernet, space_config

    profile = load_profile(device)  # an unknown device is named with the known ones
    for what, chosen, allowed in (("format", formats, FORMATS), ("precision", precisions or (), PRECISIONS)):
        bad = [c for c in chosen if c not in allowed]
        if bad or (what == "format" and not chosen):
            raise ConfigError(f"{what} {', '.join(map(repr, bad)) or '(none)'}: allowed values are "
                              f"{', '.join(allowed)}")
    if precisions is None:
        # The canonical FP32 plus what the device runs. INT8 only where a profile asks for it: on the
        # x86 CPUs measured here (AVX2, no VNNI) INT8 was slower than FP32 and missed the agreement
        # threshold on the demo model (benchmarks/export_latency.py), so the CPU profiles say fp32.
        precisions = tuple(sorted({"fp32", profile.precision}))
    if demo_data:
        task, num_classes = "classify", len(CLASSES)
    else:
        task = detect_task(data)  # a missing or empty data folder is named here
        num_classes = len(list_classes(data) if task == "classify" else segmentation_classes(data))
    name = space.get("space")
    if name not in SUPERNETS:
        raise ConfigError(f"unknown space {name!r}; known spaces: {', '.join(SUPERNETS)}")
    if SUPERNETS[name].task != task:
        raise ConfigError(f"space {name!r} is for {SUPERNETS[name].task} data, but {data} holds {task} data")
    config = space_config(name, **{k: v for k, v in space.items() if k != "space"}, num_classes=num_classes)
    build_supernet(config)  # knobs that only the network can check (a U-Net's input size, ...)
    pretrain = _settings(PretrainConfig, "pretraining", data=data, run_dir=layout.supernet_dir,
                         epochs=pretrain_epochs, batch_size=32, lr=0.02, mixup_alpha=0, cutmix_alpha=0, workers=0,
                         seed=seed, eval_paths=2, skip_bad=skip_bad)
    search_values = dict(device=device, supernet=layout.supernet, data=data, run_dir=layout.search_dir,
                         budget_ms=budget_ms, budget_mflops=budget_mflops, iterations=iterations, proposer=proposer,
                         seed=seed, resume=True)
    if "skip_bad" in SearchSettings.model_fields:
        search_values["skip_bad"] = skip_bad
    search = _settings(SearchSettings, "search", **search_values)
    retrain = _settings(RetrainConfig, "retraining", data=data, epochs=retrain_epochs, batch_size=32, lr=0.01,
                        mixup_alpha=0, cutmix_alpha=0, warmup_epochs=0, seed=seed, skip_bad=skip_bad)
    if sign_key is not None:
        from pathnas.deploy.signing import key_fingerprint

        key_fingerprint(sign_key)  # a missing or unreadable key is named now, not after the training
    return _Plan(profile, config, pretrain, search, retrain, tuple(formats), tuple(precisions), sign_key)


def run_pipeline(run: Path, data: Path | None = None, device: str = "cpu", proposer: str = "auto",
                 iterations: int = 10, budget_ms: float | None = None, budget_mflops: float | None = None,
                 pretrain_epochs: int = 20, retrain_epochs: int = 10,
                 formats: tuple[str, ...] = ("onnx", "openvino", "tensorrt"),
                 precisions: tuple[str, ...] | None = None, seed: int = 0, progress: bool = True,
                 space: dict | None = None, skip_bad: bool = False, sign_key: Path | None = None) -> dict:
    """Data -> supernet -> latency table -> search -> extract -> retrain -> export (+ quantize) -> validate
    -> bundle for the device (signed with ``sign_key`` when given) -> torch-free smoke test of the bundle."""
    layout = RunLayout(Path(run))
    demo_data = data is None
    data = layout.data if demo_data else Path(data)
    plan = _plan(layout, data, demo_data, device, proposer, iterations, budget_ms, budget_mflops, pretrain_epochs,
                 retrain_epochs, formats, precisions, seed, space or DEMO_SPACE, skip_bad, sign_key)
    layout.root.mkdir(parents=True, exist_ok=True)
    with RunLock(layout.root, "pipeline"):
        return _run(layout, plan, data, demo_data, seed, skip_bad, progress)


def _run(layout: RunLayout, plan: _Plan, data: Path, demo_data: bool, seed: int, skip_bad: bool,
         progress: bool) -> dict:
    from pathnas.data import build_loaders, load_or_create_splits
    from pathnas.train import load_supernet

    if demo_data:
        stages.stage_data(layout, seed=seed, **DEMO_DATA)
    load_or_create_splits(data, seed=seed)  # drawn before any stage hashes the data, so later runs see the same hash
    if skip_bad:  # list the unusable files in splits.json now, before any stage hashes the data set
        build_loaders(data, plan.space.input_size, 1, seed=seed, skip_bad=True)
    supernet_ckpt = stages.stage_pretrain(layout, plan.space, plan.pretrain, progress)
    supernet, _ = load_supernet(supernet_ckpt)
    latency_table = stages.stage_profile(layout, plan.profile, supernet)
    stages.stage_search(layout, plan.search.model_copy(update={"latency_table": latency_table}))
    stages.stage_extract(layout, supernet_ckpt)
    retrained = stages.stage_retrain(layout, plan.retrain)
    stages.stage_export(layout, data, list(plan.formats), list(plan.precisions))
    report = stages.stage_validate(layout, data, threads=plan.profile.threads if plan.profile.runs_here() else None)
    skipped = read_json(Path(data) / "splits.json", "splits file").get("skipped", [])
    summary = {"run_dir": str(layout.root), "device": plan.profile.name,
               "search": read_json(layout.search_summary, "search summary")["best"],
               "retrain": retrained, "validation_passed": report["passed"], "skipped_files": len(skipped),
               **_ship(layout, plan, data, report)}
    write_json_atomic(layout.summary, summary)
    return summary


def _ship(layout: RunLayout, plan: _Plan, data: Path, report: dict) -> dict:
    """The bundle for the device, verified and run once without PyTorch; or why there is none."""
    from pathnas.deploy.bundle import RUNTIME_BACKENDS

    if not report["passed"]:
        return {"bundle": None, "bundle_note": f"no bundle: validation failed (see {layout.report_markdown})"}
    if plan.profile.runtime not in RUNTIME_BACKENDS:
        return {"bundle": None, "bundle_note": f"no bundle: {plan.profile.name} runs {plan.profile.runtime}, and "
                                               f"bundles run without PyTorch"}
    bundle = stages.stage_package(layout, plan.profile, sign_key=plan.sign_key)
    smoke = stages.stage_smoke_test(layout, data, bundle, sign_key=plan.sign_key)
    return {"bundle": str(bundle), "signed": smoke["signed"], "smoke_test_passed": smoke["passed"],
            "workstation_commands": smoke["workstation_commands"]}
