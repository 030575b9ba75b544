"""The stage functions: one per step of the flow, each a function of the run directory.

The stage commands (`pathnas-edge extract`, `retrain`, `quantize`, `export`, `validate`,
`package`) and the pipeline both call these, and every one records itself in RUN/stages.json
through ``run_stage``: a stage whose inputs have not changed is skipped (unless forced), so a
crashed pipeline resumes where it stopped and a finished one re-runs in seconds.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

from pathnas.errors import ConfigError, MadeOtherwiseError, MissingFileError, UserError
from pathnas.io import read_json, write_json_atomic
from pathnas.settings import CalibrationSettings, PretrainConfig, RetrainConfig, SearchSettings

from .layout import RunLayout
from .record import run_stage

log = logging.getLogger("pathnas.pipeline")


def _afresh_if_stale(folder: Path, what: str, fn: Callable[[], object]) -> None:
    """Run ``fn``, which resumes the work in ``folder``. When that work was made with other inputs (this run's
    settings changed, or an earlier stage was redone), it cannot be resumed: it is moved aside to
    FOLDER-before-<time>, never deleted, a warning says what changed, and ``fn`` runs afresh. Every input of
    a stage is the pipeline's, so such work is a stale stage of this same run, not someone else's."""
    import datetime as dt

    try:
        fn()
    except MadeOtherwiseError as err:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = folder.with_name(f"{folder.name}-before-{stamp}")
        folder.rename(kept)
        log.warning("%s was made with other inputs (%s): moved to %s, and %s starts afresh", folder,
                    "; ".join(err.changes), kept, what)
        fn()


def _need(path: Path, command: str) -> Path:
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: run `pathnas-edge {command}` first")
    return path


# -- before the search -------------------------------------------------------------------------

def stage_data(layout: RunLayout, n_per_class: int, image_size: int, seed: int) -> Path:
    """The embedded default data set: synthetic H&E-like images in RUN/data."""
    from pathnas.data import generate

    run_stage(layout, "data", {"generator": ["synth", n_per_class, image_size, seed]}, [layout.data_marker],
              lambda: generate(layout.data, "classify", n_per_class=n_per_class, image_size=image_size, seed=seed))
    return layout.data


def stage_tiles(layout: RunLayout, slides: Path, annotations: Path, mpp: float, size: int, seed: int,
                task: str = "classify", progress: bool = True, rule: str = "centroid",
                classes: tuple[str, ...] = ()) -> Path:
    """The annotated slides cut into labelled tiles of ``size`` px at ``mpp`` in RUN/tiles (`data tiles` with
    ``rule`` and ``classes``, in priority order; () : every class found); skipped when the slides, annotations and
    settings are unchanged. Tiles of other settings are derived, so they are cut afresh."""
    import shutil

    from pathnas.data.tiling import OtherSettingsError, TileSettings, make_tiles, pair_inputs
    from pathnas.progress import progress_bar

    def build() -> None:
        jobs = pair_inputs([slides], [annotations])
        with progress_bar(transient=True, disable=not progress or None) as bar:
            job = bar.add_task("cutting the slides into tiles", total=None)

            def cut() -> None:
                make_tiles(jobs, layout.tiles, TileSettings(mpp=mpp, size=size, task=task, rule=rule, classes=classes),
                           seed=seed, warn=log.warning,
                           advance=lambda done, total: bar.update(job, completed=done, total=total))
            try:
                cut()
            except OtherSettingsError:
                shutil.rmtree(layout.tiles)
                cut()

    run_stage(layout, "tiles", {"slides": Path(slides), "annotations": Path(annotations), "mpp": mpp, "size": size,
                                "seed": seed, "task": task, "rule": rule, "classes": list(classes)},
              [layout.tiles_marker], build)
    return layout.tiles


def stage_pack(layout: RunLayout, data: Path, size: int, seed: int, skip_bad: bool, progress: bool = True) -> Path:
    """``data`` decoded once into RUN/pack at the model's input size, for the training stages: every epoch then
    reads pixels instead of decoding image files (the folder path resizes every image to that size first,
    so the pack holds the same pixels it would train on)."""
    import shutil

    from pathnas.data.shards import pack, pack_bytes
    from pathnas.progress import progress_bar

    def build() -> None:
        if layout.pack_index.exists():  # a finished pack of other files or settings: derived, so packed afresh
            shutil.rmtree(layout.pack)
        layout.root.mkdir(parents=True, exist_ok=True)
        need, free = pack_bytes(data, size), shutil.disk_usage(layout.root).free
        if need > free:
            raise ConfigError(f"packing {data} at {size} px needs {need / 2**20:,.1f} MiB in {layout.pack}, and "
                              f"{free / 2**20:,.1f} MiB are free: free some, or run with --no-pack-data (the "
                              f"training stages then decode the image files every epoch)")
        with progress_bar(transient=True, disable=not progress or None) as bar:
            job = bar.add_task("packing the data", total=None)
            pack(data, layout.pack, size=size, seed=seed, skip_bad=skip_bad,
                 advance=lambda done, total: bar.update(job, completed=done, total=total))

    run_stage(layout, "pack", {"data": Path(data), "size": size, "seed": seed, "skip_bad": skip_bad},
              [layout.pack_index], build)
    return layout.pack


def stage_pretrain(layout: RunLayout, space_config, cfg: PretrainConfig, progress: bool = True) -> Path:
    from pathnas.train import pretrain

    run_stage(layout, "pretrain", {"data": cfg.data, "space": space_config.model_dump(mode="json"),
                                   "train": cfg.model_dump(mode="json")}, [layout.supernet],
              lambda: _afresh_if_stale(layout.supernet_dir, "the supernet's training",
                                       lambda: pretrain(space_config, cfg, resume=True, progress=progress)))
    return layout.supernet


def stage_profile(layout: RunLayout, profile, supernet) -> Path | None:
    """The latency table of ``supernet``'s configuration for ``profile``: None when one is installed;
    measured here into RUN/latency when this machine is the device; NoLatencyTableError otherwise."""
    from pathnas.profiling.ondemand import installed_predictor, measure_missing_table
    from pathnas.profiling.tables import table_filename

    if installed_predictor(profile, supernet) is not None:
        return None
    config = supernet.config.model_dump(mode="json")
    table = layout.latency_dir / table_filename(config)
    run_stage(layout, "profile", {"space": config, "device": profile.name}, [table],
              lambda: measure_missing_table(profile, supernet, table))
    return table


def latency_factory(settings: SearchSettings, profile=None) -> Callable:
    """The search's latency source for its settings: the device's table (measured first when this machine is
    the device and has none; or a labelled roofline estimate); for a tabular space, the benchmark's column
    measured on the device (``--device`` names it). ``profile``: the device's hardware profile when the caller
    has it (default: loaded by ``settings.device``)."""
    if settings.tabular:
        from pathnas.search.tabular import BenchmarkLatency

        return BenchmarkLatency  # handed the benchmark table the search loaded
    from pathnas.profiling.ondemand import latency_factory as device_latency

    return device_latency(settings, profile)


def stage_search(layout: RunLayout, settings: SearchSettings, profile=None) -> dict:
    """The search into RUN/search. It resumes what it recorded; with other budgets it recomputes the verdicts.
    Evaluations made with other inputs (this run's supernet retrained, its data or evaluation settings
    changed) are moved aside and the search starts afresh (``_afresh_if_stale``)."""
    from pathnas.search import SearchStopped, run_search

    def search() -> None:
        summary = run_search(settings, latency_factory(settings, profile))
        if summary["status"] != "completed":
            raise SearchStopped(f"search stopped {summary['reason']}; everything so far is in {settings.run_dir}: "
                                f"fix it and re-run the pipeline (it resumes)")

    inputs = {"settings": settings.model_dump(mode="json", exclude={"resume"})}
    inputs.update({name: path for name, path in (("supernet", settings.supernet), ("benchmark", settings.benchmark))
                   if path is not None})
    run_stage(layout, "search", inputs, [layout.search_summary],
              lambda: _afresh_if_stale(Path(settings.run_dir), "the search", search))
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
              [layout.retrain_summary], lambda: _afresh_if_stale(layout.retrain_dir, "the retraining",
                                                                 lambda: retrain(subnet, cfg, layout.retrain_dir)),
              force)
    return read_json(layout.retrain_summary, "retrain summary")


def stage_quantize(layout: RunLayout, data: Path, calibration: CalibrationSettings = CalibrationSettings(),
                   force: bool = False) -> dict:
    """Static INT8 PTQ of RUN/export/model.onnx into RUN/quantize/model_int8.onnx (calibrated on train,
    accuracy-controlled on val); returns the calibration record."""
    from pathnas.data import build_loaders
    from pathnas.export.quantize import quantize_run

    source = _need(layout.onnx, "export --format onnx")
    settings = calibration.model_dump(mode="json")

    def quantize() -> None:
        preprocess = read_json(layout.preprocess, "preprocessing record")
        loaders = build_loaders(data, preprocess["input_size"], 16)
        quantize_run(source, layout.quantize_dir, loaders, calibration)

    run_stage(layout, "quantize", {"onnx": source, "data": Path(data), "settings": settings},
              [layout.int8_onnx, layout.calibration_record], quantize, force)
    info = read_json(layout.calibration_record, "calibration record")
    info["size_mb"], info["fp32_size_mb"] = layout.int8_onnx.stat().st_size / 1e6, source.stat().st_size / 1e6
    return info


def stage_export(layout: RunLayout, data: Path, formats: list[str], precisions: list[str],
                 calibration: CalibrationSettings = CalibrationSettings(), force: bool = False) -> list[dict]:
    """Every format x precision as an artifact (RUN/export/export.json lists them with their status): the
    canonical FP32 ONNX, then INT8 through the quantize stage (the one place INT8 happens; skipped when
    RUN/quantize is up to date for it), then every conversion."""
    from pathnas.data import dataset_summary
    from pathnas.export.artifacts import convert_artifacts, export_canonical, input_shape, write_export_record
    from pathnas.subnet import load_subnet

    model_path = layout.model_for_export()
    _need(model_path, "extract")

    def export() -> None:
        model, meta = load_subnet(model_path)
        canonical = export_canonical(layout.export_dir, model, meta, dataset_summary(data))
        int8 = stage_quantize(layout, data, calibration, force=force) if "int8" in precisions else None
        rows = convert_artifacts(layout.export_dir, layout.quantize_dir, formats, precisions, input_shape(meta), int8)
        write_export_record(layout.root, layout.export_dir, canonical, rows)

    run_stage(layout, "export", {"model": model_path, "formats": list(formats), "precisions": list(precisions),
                                 "calibration_images": calibration.calibration_images}, [layout.export_record], export,
              force)
    return read_json(layout.export_record, "export record")["artifacts"]


def stage_validate(layout: RunLayout, data: Path, threads: int | None = None, max_images: int | None = None,
                   force: bool = False) -> dict:
    """Every exported artifact against PyTorch on the validation split: RUN/validate/report.{json,md}."""
    from pathnas.data import build_loaders
    from pathnas.export.report import save_report
    from pathnas.export.validate import int8_notes, validate
    from pathnas.subnet import load_subnet

    record = _need(layout.export_record, "export")

    def run() -> None:
        model, meta = load_subnet(layout.model_for_export())
        exported = read_json(record, "export record")
        loaders = build_loaders(data, meta["space_config"]["input_size"], 16)
        report = validate(layout.root, model, exported["artifacts"], loaders.val, meta["task"], loaders.num_classes,
                          threads, max_images)
        report["notes"] = int8_notes(report)
        save_report(report, layout.validate_dir)

    run_stage(layout, "validate", {"export": record, "threads": threads, "max_images": max_images},
              [layout.report], run, force)
    return read_json(layout.report, "validation report")


def stage_package(layout: RunLayout, profile, out: Path | None = None, measure_latency: bool = True,
                  force: bool = False, sign_key: Path | None = None) -> Path:
    """A verified bundle of the validated artifacts for ``profile`` at ``out`` (and ``out``.zip), with the
    latency reference model and, when this machine runs the profile, the latency baseline; the manifest
    signed with ``sign_key`` when given. ``out`` defaults to RUN/bundle, which a re-run replaces when its
    inputs changed; any other ``out`` that exists is refused."""
    import dataclasses

    from pathnas.deploy.bundle import PackageInputs, package, zip_path
    from pathnas.deploy.signing import key_fingerprint

    from pathnas.profiling.reference import write_reference_model

    out = Path(out) if out is not None else layout.bundle
    inputs = PackageInputs(root=layout.root, report=_need(layout.report, "validate"),
                           export=_need(layout.export_record, "export"), preprocess=layout.preprocess,
                           labels=layout.labels, retrain_summary=layout.retrain_summary)
    measure = measure_latency and profile.matches_here()
    reason = "--no-latency" if not measure_latency else f"this machine cannot run {profile.name}"
    signer = key_fingerprint(sign_key) if sign_key is not None else None  # the public half only, never the key

    def build() -> None:
        with tempfile.TemporaryDirectory(prefix="pathnas-reference-") as tmp:
            reference = write_reference_model(Path(tmp) / "latency_reference.onnx")
            package(dataclasses.replace(inputs, reference=reference), profile.device, out, measure, reason,
                    sign_key=sign_key, replace=out.absolute() == layout.bundle.absolute())

    settings = profile.model_dump(mode="json") if hasattr(profile, "model_dump") else profile.name
    run_stage(layout, "package", {"report": inputs.report, "export": inputs.export, "preprocess": inputs.preprocess,
                                  "labels": inputs.labels, "profile": settings, "out": layout.relative(out),
                                  "measure_latency": measure, "signed_by": signer}, [out, zip_path(out)], build, force)
    return out


class SmokeTestError(UserError):
    """The torch-free runtime's outputs differ from the validated PyTorch model's."""

    exit_code = 1


# How close the runtime must come to PyTorch on the same files (its Pillow resize is not torchvision's
# antialiased one bit for bit; validation holds the ONNX file itself to cosine >= 0.99999).
SMOKE_PROB_ATOL = 5e-3
SMOKE_MIN_PIXEL_AGREEMENT = 0.99


def stage_smoke_test(layout: RunLayout, data: Path, bundle: Path | None = None, images: int = 8,
                     sign_key: Path | None = None, force: bool = False) -> dict:
    """Run the bundle through `pathnas-infer` exactly as a workstation would (a fresh process in which
    torch cannot be imported; the bundle verified first, its signature against ``sign_key``'s public half
    when given) on the first ``images`` validation images, and check its outputs equal the PyTorch
    model's that validation compared every artifact with: the same class and probabilities within
    SMOKE_PROB_ATOL (segmentation: >= 99% of mask pixels alike). Writes RUN/smoke_test.json;
    SmokeTestError when they differ. Returns the record, with the commands to run on the workstation."""
    from pathnas.deploy.signing import MANIFEST, key_fingerprint, public_key_pem

    bundle = Path(bundle) if bundle is not None else layout.bundle
    manifest = _need(bundle / MANIFEST, "package")

    def run() -> None:
        with tempfile.TemporaryDirectory(prefix="pathnas-trust-") as tmp:
            trusted = None
            if sign_key is not None:
                trusted = Path(tmp) / f"{Path(sign_key).name}.pub"
                trusted.write_bytes(public_key_pem(sign_key))
            record = _smoke_test(layout, Path(data), bundle, images, trusted)
        write_json_atomic(layout.smoke_test, record)
        if not record["passed"]:
            raise SmokeTestError(f"smoke test of {bundle}: {record['problem']} (details in {layout.smoke_test})")

    run_stage(layout, "smoke_test", {"manifest": manifest, "model": layout.model_for_export(), "images": images,
                                     "signed_by": key_fingerprint(sign_key) if sign_key else None},
              [layout.smoke_test], run, force)
    return read_json(layout.smoke_test, "smoke test record")


def _smoke_test(layout: RunLayout, data: Path, bundle: Path, images: int, trusted_key: Path | None) -> dict:
    from pathnas.deploy.signing import SIGNATURE

    from .smoke import compare_outputs, reference_outputs, run_torch_free, workstation_commands

    reference = reference_outputs(layout.model_for_export(), data, images)
    signed = (bundle / SIGNATURE).exists()
    record = {"bundle": str(bundle), "signed": signed, "images": [str(p) for p in reference.paths],
              "task": reference.task}
    with tempfile.TemporaryDirectory(prefix="pathnas-smoke-") as tmp:
        run = run_torch_free(bundle, reference.paths, trusted_key, Path(tmp))
        record.update(returncode=run.returncode, stderr_tail=run.stderr[-2000:])
        if run.returncode != 0:
            record.update(passed=False, problem=f"pathnas-infer exited {run.returncode}: "
                                                f"{run.stderr.strip().splitlines()[-1:]}")
        else:
            record.update(compare_outputs(reference, run.rows, SMOKE_PROB_ATOL, SMOKE_MIN_PIXEL_AGREEMENT))
    record["signature_checked"] = trusted_key is not None
    record["workstation_commands"] = workstation_commands(bundle, trusted_key, signed)
    return record
