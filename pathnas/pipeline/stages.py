"""The stage functions: one per step of the flow, each a function of the run directory.

The stage commands (`pathnas-edge extract`, `retrain`, `quantize`, `export`, `validate`,
`package`) and the pipeline both call these, and every one records itself in RUN/stages.json
through ``run_stage``: a stage whose inputs have not changed is skipped (unless forced), so a
crashed pipeline resumes where it stopped and a finished one re-runs in seconds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from pathnas.errors import MissingFileError
from pathnas.io import read_json
from pathnas.settings import PretrainConfig, RetrainConfig, SearchSettings

from .layout import RunLayout
from .record import run_stage

log = logging.getLogger("pathnas.pipeline")


def _need(path: Path, command: str) -> Path:
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: run `pathnas-edge {command}` first")
    return path


# -- before the search -------------------------------------------------------------------------

def stage_data(layout: RunLayout, n_per_class: int, image_size: int, seed: int) -> Path:
    """The embedded default data set: synthetic H&E-like images in RUN/data."""
    from pathnas.data import generate

    run_stage(layout, "data", {"generator": ["synth", n_per_class, image_size, seed]}, [layout.data / "dataset.json"],
              lambda: generate(layout.data, "classify", n_per_class=n_per_class, image_size=image_size, seed=seed))
    return layout.data


def stage_pretrain(layout: RunLayout, space_config, cfg: PretrainConfig, progress: bool = True) -> Path:
    from pathnas.train import pretrain

    run_stage(layout, "pretrain", {"data": cfg.data, "space": space_config.model_dump(mode="json"),
                                   "train": cfg.model_dump(mode="json")}, [layout.supernet],
              lambda: pretrain(space_config, cfg, resume=True, progress=progress))
    return layout.supernet


def stage_profile(layout: RunLayout, profile, supernet) -> Path | None:
    """The latency table of ``supernet``'s configuration for ``profile``: None when one is installed;
    measured here into RUN/latency when this machine is the device; NoLatencyTableError otherwise."""
    from pathnas.profiling import measure_table, predictor_for, save_table
    from pathnas.profiling.tables import NoLatencyTableError, table_filename

    try:
        predictor_for(profile, supernet)
        return None
    except NoLatencyTableError:
        if not profile.runs_here():
            raise
    config = supernet.config.model_dump(mode="json")
    table = layout.latency_dir / table_filename(config)
    log.info("no latency table for %s and this configuration: measuring it here", profile.name)
    run_stage(layout, "profile", {"space": config, "device": profile.name}, [table],
              lambda: save_table(measure_table(supernet, profile, subnets=20, fit_subnets=6, rounds=2), table))
    return table


def latency_factory(settings: SearchSettings) -> Callable:
    """The search's latency source for its settings: the device's table (or a labelled roofline estimate)."""
    from pathnas.profiling import load_profile, predictor_for

    profile = load_profile(settings.device)
    return lambda supernet: predictor_for(profile, supernet, settings.latency_source, settings.latency_table,
                                          measure_here=settings.measure_local)


def stage_search(layout: RunLayout, settings: SearchSettings) -> dict:
    from pathnas.errors import UserError
    from pathnas.search import run_search

    def search() -> None:
        summary = run_search(settings, latency_factory(settings))
        if summary["status"] != "completed":
            raise UserError(f"search stopped: {summary['reason']}; fix it and re-run the pipeline (it resumes)")

    run_stage(layout, "search", {"supernet": settings.supernet,
                                 "settings": settings.model_dump(mode="json", exclude={"resume"})},
              [layout.search_summary], search)
    return read_json(layout.search_summary, "search summary")


# -- after the search: the stage commands ------------------------------------------------------------

def stage_extract(layout: RunLayout, supernet: Path, arch: str | None = None, force: bool = False) -> dict:
    """The chosen path (default: the search's best) as a standalone model, RUN/extract/subnet.pt."""
    from pathnas.subnet import best_arch_from_search, extract

    chosen = arch or best_arch_from_search(layout.search_summary)
    run_stage(layout, "extract", {"supernet": Path(supernet), "arch": chosen}, [layout.subnet],
              lambda: extract(supernet, chosen, layout.subnet), force)
    from pathnas.subnet import load_subnet

    model, meta = load_subnet(layout.subnet)
    return {"arch": meta["arch"], "params": sum(p.numel() for p in model.parameters()),
            "path": str(layout.subnet)}


def stage_retrain(layout: RunLayout, cfg: RetrainConfig, force: bool = False) -> dict:
    """Retrain the extracted subnet into RUN/retrain (resumable); returns its summary."""
    from pathnas.retrain import retrain

    subnet = _need(layout.subnet, "extract")
    run_stage(layout, "retrain", {"subnet": subnet, "settings": cfg.model_dump(mode="json")},
              [layout.retrain_summary], lambda: retrain(subnet, cfg, layout.retrain_dir), force)
    return read_json(layout.retrain_summary, "retrain summary")


def stage_quantize(layout: RunLayout, data: Path, calibration_images: int = 512, keep_first_conv: bool = True,
                   keep_classifier: bool = True, reduce_range: bool = True, force: bool = False) -> dict:
    """Static INT8 PTQ of RUN/export/model.onnx into RUN/quantize/model_int8.onnx; returns the calibration record."""
    from pathnas.data import build_loaders
    from pathnas.export.quantize import calibration_batches, quantize_int8, write_calibration_record

    source = _need(layout.onnx, "export --format onnx")
    settings = {"calibration_images": calibration_images, "keep_first_conv": keep_first_conv,
                "keep_classifier": keep_classifier, "reduce_range": reduce_range}

    def quantize() -> None:
        preprocess = read_json(layout.preprocess, "preprocessing record")
        loaders = build_loaders(data, preprocess["input_size"], 16)
        info = quantize_int8(source, layout.int8_onnx, calibration_batches(loaders.calib, calibration_images),
                             keep_first_conv, keep_classifier, calibration_images, reduce_range=reduce_range)
        write_calibration_record(layout.calibration_record, info)

    run_stage(layout, "quantize", {"onnx": source, "data": Path(data), "settings": settings},
              [layout.int8_onnx, layout.calibration_record], quantize, force)
    info = read_json(layout.calibration_record, "calibration record")
    info["size_mb"], info["fp32_size_mb"] = layout.int8_onnx.stat().st_size / 1e6, source.stat().st_size / 1e6
    return info


def stage_export(layout: RunLayout, data: Path, formats: list[str], precisions: list[str],
                 calibration_images: int = 512, force: bool = False) -> list[dict]:
    """Every format x precision as an artifact (RUN/export/export.json lists them with their status)."""
    from pathnas.data import build_loaders, dataset_summary
    from pathnas.export.artifacts import export_artifacts
    from pathnas.subnet import load_subnet

    model_path = layout.model_for_export()
    _need(model_path, "extract")

    def export() -> None:
        model, meta = load_subnet(model_path)
        loaders = build_loaders(data, meta["space_config"]["input_size"], 16)
        export_artifacts(layout.root, layout.export_dir, layout.quantize_dir, model, meta, loaders.calib, formats,
                         precisions, calibration_images, dataset=dataset_summary(data))

    run_stage(layout, "export", {"model": model_path, "formats": list(formats), "precisions": list(precisions),
                                 "calibration_images": calibration_images}, [layout.export_record], export, force)
    return read_json(layout.export_record, "export record")["artifacts"]


def stage_validate(layout: RunLayout, data: Path, threads: int | None = None, max_images: int | None = None,
                   force: bool = False) -> dict:
    """Every exported artifact against PyTorch on the validation split: RUN/validate/report.{json,md}."""
    from pathnas.data import build_loaders
    from pathnas.export.report import save_report
    from pathnas.export.validate import validate
    from pathnas.subnet import load_subnet

    record = _need(layout.export_record, "export")

    def run() -> None:
        model, meta = load_subnet(layout.model_for_export())
        exported = read_json(record, "export record")
        loaders = build_loaders(data, meta["space_config"]["input_size"], 16)
        report = validate(layout.root, model, exported["artifacts"], loaders.val, meta["task"], loaders.num_classes,
                          threads, max_images)
        report["notes"] = _int8_note(report)
        save_report(report, layout.validate_dir)

    run_stage(layout, "validate", {"export": record, "threads": threads, "max_images": max_images},
              [layout.report], run, force)
    return read_json(layout.report, "validation report")


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


def stage_package(layout: RunLayout, profile, out: Path, measure_latency: bool = True, force: bool = False) -> Path:
    """A verified bundle of the validated artifacts for ``profile`` at ``out`` (and ``out``.zip)."""
    from pathnas.deploy.bundle import PackageInputs, package

    inputs = PackageInputs(root=layout.root, report=_need(layout.report, "validate"),
                           export=_need(layout.export_record, "export"), preprocess=layout.preprocess,
                           labels=layout.labels, retrain_summary=layout.retrain_summary)
    measure = measure_latency and profile.runs_here()
    reason = "--no-latency" if not measure_latency else f"this machine cannot run {profile.name}"
    run_stage(layout, "package", {"report": inputs.report, "export": inputs.export, "profile": profile.name,
                                  "out": str(out), "measure_latency": measure}, [Path(out)],
              lambda: package(inputs, profile, out, measure, reason), force)
    return Path(out)
