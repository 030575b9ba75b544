"""`pathnas-edge pipeline`: every stage in one run directory, on the embedded default unless told otherwise.

Every setting is checked before the first stage runs (a misspelt device must not cost a whole
pretraining), and the pipeline holds the run directory's lock from start to end: a second
pipeline on the same directory refuses at once, naming this one's process.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathnas.errors import ConfigError, UserError
from pathnas.io import read_json, write_json_atomic
from pathnas.lock import RunLock
from pathnas.settings import DEMO_DATA, DEMO_SPACE, PipelineSettings, PretrainConfig, RetrainConfig, SearchSettings

from . import stages
from .layout import RunLayout

__all__ = ["DEMO_DATA", "DEMO_SPACE", "run_pipeline"]


@dataclass(frozen=True)
class _Plan:
    """Everything the stages need, validated before the first one runs."""

    settings: PipelineSettings
    data: Path
    demo_data: bool
    profile: Any
    space: Any  # the space configuration
    pretrain: PretrainConfig
    search: SearchSettings
    retrain: RetrainConfig
    precisions: tuple[str, ...]


def _plan(layout: RunLayout, settings: PipelineSettings) -> _Plan:
    from pathnas.data import CLASSES, detect_task, list_classes, segmentation_classes
    from pathnas.profiling import load_profile
    from pathnas.spaces import SUPERNETS, build_supernet, space_config

    profile = load_profile(settings.device)  # an unknown device is named with the known ones
    # The canonical FP32 plus what the device runs. INT8 only where a profile asks for it: on the x86 CPUs
    # measured (benchmarks/export_latency.py) INT8 was not faster than FP32, so the CPU profiles say fp32.
    precisions = settings.precisions or tuple(sorted({"fp32", profile.precision}))
    demo_data = settings.data is None and settings.slides is None and settings.annotations is None
    data = layout.data if demo_data else _tiles_first(layout, settings) if settings.data is None else Path(settings.data)
    if demo_data:
        task, num_classes = "classify", len(CLASSES)
    else:
        from pathnas.data.shards import is_pack

        if is_pack(data):  # the smoke test runs pathnas-infer on image files, as a workstation would
            raise ConfigError(f"{data} is a pack: the pipeline needs the image folder it was packed from (pretrain "
                              f"and search read the pack itself)")
        task = detect_task(data)  # a missing or empty data folder is named here
        num_classes = len(list_classes(data) if task == "classify" else segmentation_classes(data))
    name = settings.space.get("space")
    if name not in SUPERNETS:
        raise ConfigError(f"unknown space {name!r}; known spaces: {', '.join(SUPERNETS)}")
    if SUPERNETS[name].task != task:
        raise ConfigError(f"space {name!r} is for {SUPERNETS[name].task} data, but {data} holds {task} data")
    config = space_config(name, **{k: v for k, v in settings.space.items() if k != "space"}, num_classes=num_classes)
    build_supernet(config)  # knobs that only the network can check (a U-Net's input size, ...)
    if settings.sign_key is not None:
        from pathnas.deploy.signing import key_fingerprint

        key_fingerprint(settings.sign_key)  # a missing or unreadable key is named now, not after the training
    training_data = layout.pack if settings.pack_data else data  # the image folder stays for export and checks
    return _Plan(settings, data, demo_data, profile, config,
                 settings.pretrain_config(training_data, layout.supernet_dir),
                 settings.search_settings(training_data, layout.supernet, layout.search_dir),
                 settings.retrain_config(training_data), precisions)


def _tiles_first(layout: RunLayout, settings: PipelineSettings) -> Path:
    """--slides and --annotations: the first stage cuts them into RUN/tiles at --mpp, in tiles of the space's input
    size and for its task (cheap beside the training, and what the classes and the task are read from)."""
    from pathnas.spaces import SUPERNETS, space_config

    if settings.slides is None or settings.annotations is None:
        raise ConfigError("--slides and --annotations go together: the slides and a folder of their annotations")
    name = settings.space.get("space")
    if name not in SUPERNETS:
        raise ConfigError(f"unknown space {name!r}; known spaces: {', '.join(SUPERNETS)}")
    size = space_config(name, **{k: v for k, v in settings.space.items() if k != "space"}, num_classes=2).input_size
    classes = tuple(c.strip() for c in (settings.classes or "").split(",") if c.strip())
    return stages.stage_tiles(layout, settings.slides, settings.annotations, settings.mpp, size, settings.seed,
                              SUPERNETS[name].task, rule=settings.label_rule, classes=classes)


def run_pipeline(run: Path, settings: PipelineSettings | None = None, *, progress: bool = True) -> dict:
    """Data -> pack (unless --no-pack-data) -> supernet -> latency table -> search -> extract -> retrain -> export
    (+ quantize) -> validate -> bundle for the device (signed when ``settings.sign_key`` is given) -> torch-free
    smoke test of it."""
    layout = RunLayout(Path(run))
    plan = _plan(layout, settings or PipelineSettings())
    layout.root.mkdir(parents=True, exist_ok=True)
    with RunLock(layout.root, "pipeline"):
        return _run(layout, plan, progress)


def _run(layout: RunLayout, plan: _Plan, progress: bool) -> dict:
    from pathnas.data import build_loaders, load_or_create_splits
    from pathnas.data.folders import SPLITS_FILE
    from pathnas.train import load_supernet

    data, seed, skip_bad = plan.data, plan.settings.seed, plan.settings.skip_bad
    if plan.demo_data:
        stages.stage_data(layout, seed=seed, **DEMO_DATA)
    load_or_create_splits(data, seed=seed)  # drawn before any stage hashes the data, so later runs see the same hash
    if skip_bad:  # list the unusable files in splits.json now, before any stage hashes the data set
        build_loaders(data, plan.space.input_size, 1, seed=seed, skip_bad=True)
    if plan.settings.pack_data:
        stages.stage_pack(layout, data, plan.space.input_size, seed, skip_bad, progress)
    supernet_ckpt = stages.stage_pretrain(layout, plan.space, plan.pretrain, progress)
    supernet, _ = load_supernet(supernet_ckpt)
    latency_table = stages.stage_profile(layout, plan.profile, supernet)
    stages.stage_search(layout, plan.search.model_copy(update={"latency_table": latency_table}), plan.profile)
    stages.stage_extract(layout, supernet_ckpt)
    retrained = stages.stage_retrain(layout, plan.retrain)
    stages.stage_export(layout, data, list(plan.settings.formats), list(plan.precisions))
    report = stages.stage_validate(layout, data, threads=plan.profile.threads if plan.profile.matches_here() else None)
    skipped = read_json(Path(data) / SPLITS_FILE, "splits file").get("skipped", [])
    summary = {"run_dir": str(layout.root), "device": plan.profile.name,
               "search": read_json(layout.search_summary, "search summary")["best"],
               "retrain": retrained, "validation_passed": report["passed"], "skipped_files": len(skipped),
               **_ship(layout, plan, report), "report": str(layout.report_html)}
    write_json_atomic(layout.summary, summary)
    from .report import write_run_report

    write_run_report(layout.root)  # RUN/report.html, for people: last, from the files of the run
    return summary


def _ship(layout: RunLayout, plan: _Plan, report: dict) -> dict:
    """The bundle for the device, verified and run once without PyTorch; or why there is none."""
    from pathnas.deploy.bundle import packageable_rows

    try:  # the bundle ships what passed for the device's runtime; an artifact that missed is never offered
        packageable_rows(report, plan.profile.device, layout.report)
    except UserError as err:
        return {"bundle": None, "bundle_note": f"no bundle: {err}"}
    bundle = stages.stage_package(layout, plan.profile, sign_key=plan.settings.sign_key)
    smoke = stages.stage_smoke_test(layout, plan.data, bundle, sign_key=plan.settings.sign_key)
    return {"bundle": str(bundle), "signed": smoke["signed"], "smoke_test_passed": smoke["passed"],
            "workstation_commands": smoke["workstation_commands"]}
