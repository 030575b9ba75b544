"""Stages after the supernet, and `pathnas-edge pipeline`, which chains everything in one run directory.

Each stage is a function of the run directory; the stage commands (extract, retrain,
quantize, export, validate) and the pipeline both call them. Through ``pathnas.stages``
a stage whose inputs have not changed is skipped, so a crashed pipeline resumes where it
stopped and a finished one re-runs in seconds.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .io import write_json_atomic
from .stages import run_stage

log = logging.getLogger("pathnas.pipeline")

# The embedded default: CPU-sized, learns on the synthetic data in a few minutes on 2 cores.
DEMO_SPACE = {"space": "shufflenet", "input_size": 64, "width_mult": 0.5, "stage_repeats": [1, 1, 2, 1]}


def model_for_export(run: Path) -> Path:
    """The retrained model if there is one, else the extracted one."""
    retrained = run / "retrain" / "best.pt"
    return retrained if retrained.exists() else run / "extract" / "subnet.pt"


def stage_extract(run: Path, supernet: Path, arch: str | None = None) -> dict:
    from .subnet import best_arch_from_search, extract

    arch = arch or best_arch_from_search(run / "search" / "summary.json")
    return extract(supernet, arch, run / "extract" / "subnet.pt")


def stage_export(run: Path, data: Path, formats: list[str], precisions: list[str], calibration_images: int = 512,
                 keep_first_conv: bool = True, keep_classifier: bool = True) -> list[dict]:
    from pathnas.export.artifacts import export_artifacts

    from .data import build_loaders, dataset_summary
    from .subnet import load_subnet

    model, meta = load_subnet(model_for_export(run))
    bundle = build_loaders(data, meta["space_config"]["input_size"], 16)
    return export_artifacts(run, model, meta, bundle.calib, formats, precisions, calibration_images,
                            keep_first_conv, keep_classifier, dataset=dataset_summary(data))


def stage_validate(run: Path, data: Path, threads: int | None = None, max_images: int | None = None) -> dict:
    from pathnas.export.report import save_report
    from pathnas.export.validate import validate

    from .data import build_loaders
    from .subnet import load_subnet

    model, meta = load_subnet(model_for_export(run))
    exported = json.loads((run / "export" / "export.json").read_text())
    bundle = build_loaders(data, meta["space_config"]["input_size"], 16)
    report = validate(run, model, exported["artifacts"], bundle.val, meta["task"], bundle.num_classes, threads, max_images)
    report["notes"] = _int8_note(report)
    save_report(report, run / "validate")
    return report


def _int8_note(report: dict) -> list[str]:
    """Say plainly when INT8 is slower than FP32 on this CPU (AVX2 without VNNI)."""
    notes = []
    for backend in ("onnxruntime", "openvino"):
        rows = {r["precision"]: r for r in report["rows"] if r["backend"] == backend and r.get("latency_p50_ms")}
        if "fp32" in rows and "int8" in rows:
            ratio = rows["int8"]["latency_p50_ms"] / rows["fp32"]["latency_p50_ms"]
            if ratio > 1:
                notes.append(f"{backend}: INT8 is {ratio:.2f}x the FP32 latency on this CPU (no VNNI): the CPU "
                             f"profiles keep FP32.")
            else:
                notes.append(f"{backend}: INT8 runs at {ratio:.2f}x the FP32 latency on this CPU.")
    return notes


def run_pipeline(run: Path, data: Path | None = None, device: str = "cpu", proposer: str = "auto",
                 iterations: int = 10, budget_ms: float | None = None, budget_mflops: float | None = None,
                 pretrain_epochs: int = 20, retrain_epochs: int = 10, formats: tuple[str, ...] = ("onnx", "openvino", "tensorrt"),
                 precisions: tuple[str, ...] | None = None, seed: int = 0, progress: bool = True,
                 space: dict | None = None) -> dict:
    """Data -> supernet -> latency table -> search -> extract -> retrain -> export (+ quantize) -> validate."""
    from .data import generate, list_classes, load_or_create_splits
    from .profiling import load_profile, measure_table, predictor_for, save_table
    from .profiling.tables import NoLatencyTableError, table_filename
    from .retrain import RetrainConfig, retrain
    from .search import SearchSettings, run_search
    from .spaces import space_config
    from .train import PretrainConfig, load_supernet, pretrain

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    if data is None:  # the embedded default: synthetic histology
        data = run / "data"
        run_stage(run, "data", {"generator": ["synth", 200, 64, seed]}, [data / "dataset.json"],
                  lambda: generate(data, "classify", n_per_class=200, image_size=64, seed=seed))
    load_or_create_splits(data)  # drawn before any stage hashes the data folder, so later runs see the same hash
    supernet_ckpt = run / "supernet" / "last.pt"
    pretrain_cfg = PretrainConfig(data=data, run_dir=run / "supernet", epochs=pretrain_epochs, batch_size=32, lr=0.02,
                                  mixup_alpha=0, cutmix_alpha=0, workers=0, seed=seed, eval_paths=2)
    knobs = {k: v for k, v in (space or DEMO_SPACE).items() if k != "space"}
    config = space_config((space or DEMO_SPACE)["space"], **knobs, num_classes=len(list_classes(data)))
    run_stage(run, "pretrain", {"data": data, "space": config.model_dump(mode="json"),
                                "train": pretrain_cfg.model_dump(mode="json")}, [supernet_ckpt],
              lambda: pretrain(config, pretrain_cfg, resume=True, progress=progress))

    profile = load_profile(device)
    if precisions is None:
        # The canonical FP32 plus what the device runs. INT8 only where a profile asks for it: on the
        # x86 CPUs measured here (AVX2, no VNNI) INT8 was slower than FP32 and missed the agreement
        # threshold on the demo model (benchmarks/export_latency.py), so the CPU profiles say fp32.
        precisions = tuple(sorted({"fp32", profile.precision}))
    supernet, _ = load_supernet(supernet_ckpt)
    latency_table = None
    try:
        predictor_for(profile, supernet)
    except NoLatencyTableError:
        if not profile.runs_here():
            raise
        # This machine IS the device: measure its table now rather than guess.
        latency_table = run / "latency" / table_filename(supernet.config.model_dump(mode="json"))
        log.info("no latency table for %s and this configuration: measuring it here", profile.name)
        run_stage(run, "profile", {"space": supernet.config.model_dump(mode="json"), "device": profile.name},
                  [latency_table], lambda: save_table(measure_table(supernet, profile, subnets=20, fit_subnets=6,
                                                                    rounds=2), latency_table))
    search = SearchSettings(device=device, supernet=supernet_ckpt, data=data, run_dir=run / "search",
                            budget_ms=budget_ms, budget_mflops=budget_mflops, iterations=iterations, proposer=proposer,
                            latency_table=latency_table, seed=seed, resume=True)
    run_stage(run, "search", {"supernet": supernet_ckpt, "settings": search.model_dump(mode="json", exclude={"resume"})},
              [run / "search" / "summary.json"], lambda: _completed(run_search(search)))
    run_stage(run, "extract", {"supernet": supernet_ckpt, "search": run / "search" / "summary.json"},
              [run / "extract" / "subnet.pt"], lambda: stage_extract(run, supernet_ckpt))
    retrain_cfg = RetrainConfig(data=data, epochs=retrain_epochs, batch_size=32, lr=0.01, mixup_alpha=0,
                                cutmix_alpha=0, warmup_epochs=0, seed=seed)
    run_stage(run, "retrain", {"subnet": run / "extract" / "subnet.pt", "settings": retrain_cfg.model_dump(mode="json")},
              [run / "retrain" / "summary.json"],
              lambda: retrain(run / "extract" / "subnet.pt", retrain_cfg, run / "retrain"))
    run_stage(run, "export", {"model": model_for_export(run), "formats": formats, "precisions": precisions},
              [run / "export" / "export.json"], lambda: stage_export(run, data, list(formats), list(precisions)))
    run_stage(run, "validate", {"export": run / "export" / "export.json"}, [run / "validate" / "report.json"],
              lambda: stage_validate(run, data, threads=profile.threads if profile.runs_here() else None))
    report = json.loads((run / "validate" / "report.json").read_text())
    summary = {"run_dir": str(run), "device": profile.name,
               "search": json.loads((run / "search" / "summary.json").read_text())["best"],
               "retrain": json.loads((run / "retrain" / "summary.json").read_text()),
               "validation_passed": report["passed"]}
    write_json_atomic(run / "pipeline.json", summary)
    return summary


def _completed(summary: dict) -> None:
    if summary["status"] != "completed":
        raise RuntimeError(f"search stopped: {summary['reason']}; fix it and re-run the pipeline (it resumes)")
