"""Retraining the extracted subnet as a standalone model.

Starts from the inherited supernet weights (after BN recalibration) unless asked to start
from scratch; selects the best epoch on VAL; reads TEST once, at the end, with the best
weights. A checkpoint is written atomically every epoch and a killed run resumes exactly
(the random states are in the checkpoint; the data order and augmentation are functions of
the seed and the epoch), but only with the settings and the subnet it was made with.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from .checkpoint import (BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_LOG, disk_full_guard, resume_training,
                         save_checkpoint, settings_hash)
from .errors import ConfigError
from .io import append_jsonl, sha256_file, sweep_temporaries, write_json_atomic
from .lock import RunLock
from .settings import RetrainConfig
from .subnet import build_subnet, load_subnet, save_subnet
from .train import build_training, evaluate, primary_metric, recalibrate_bn, train_epoch
from .train.distributed import DistContext, resolve_device
from .train.rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger("pathnas.retrain")

RETRAIN_FORMAT = "pathnas-retrain/1"
SUMMARY_FILE = "summary.json"  # the best epoch's val metrics and the one reading of test


def retrain(subnet_path: Path, cfg: RetrainConfig, out_dir: Path, progress=None) -> dict:
    """Train into ``out_dir`` (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_LOG, SUMMARY_FILE); returns the summary.

    Holds ``out_dir``'s lock for the whole run: a second retrain into it refuses.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir, "retrain"):
        sweep_temporaries(out_dir)  # what a killed run was writing; the lock says no one writes now
        return _retrain(Path(subnet_path), cfg, out_dir, progress)


def _retrain(subnet_path: Path, cfg: RetrainConfig, out_dir: Path, progress) -> dict:
    from .data import SPLITS_FILE, build_loaders, data_fingerprint

    device = resolve_device(cfg.device)
    model, meta = load_subnet(subnet_path)
    if cfg.from_scratch:
        seed_everything(cfg.seed, "init")
        model = build_subnet(meta["space_config"], meta["arch"])
    data = build_loaders(cfg.data, meta["space_config"]["input_size"], cfg.batch_size, seed=cfg.seed,
                         workers=cfg.workers, skip_bad=cfg.skip_bad)
    if data.classes != meta["classes"] and meta["classes"]:
        raise ConfigError(f"{cfg.data} has classes {data.classes}, the subnet was built for {meta['classes']}")
    if data.skipped:
        log.warning("skipped %d unusable file(s); they are listed in %s", len(data.skipped),
                    Path(cfg.data) / SPLITS_FILE)
    model.to(device)
    task, key = meta["task"], primary_metric(meta["task"])
    parts = build_training(model, task, data.num_classes, cfg, len(data.train), device)
    ctx = DistContext(0, 1, 0, device)
    start_epoch, best = 0, -math.inf
    last = out_dir / LAST_CHECKPOINT
    # What the checkpoint must have been made from: this very subnet (its file's hash) and these settings.
    identity = {"arch": meta["arch"], "space_config": meta["space_config"], "subnet_sha256": sha256_file(subnet_path)}
    settings = {**cfg.result_settings(), "data": data_fingerprint(cfg.data)}
    seed_everything(cfg.seed, "train")
    if last.exists():
        resumed = resume_training(last, RETRAIN_FORMAT, "retrain", model, parts, out_dir / METRICS_LOG,
                                  identity, settings, map_location=device)
        start_epoch, best = resumed.epoch, resumed.best_metric
        set_rng_state(resumed.checkpoint["rng"])
        log.info("retrain: resumed after epoch %d", start_epoch)
    elif not cfg.from_scratch:
        recalibrate_bn(model, data.calib, cfg.bn_images, device)  # inherited BN stats mix every path
    if start_epoch == 0:
        initial = evaluate(model, data.val, task, data.num_classes, device)
        best = initial[key]
        save_subnet(out_dir / BEST_CHECKPOINT, model, meta["space_config"], meta["arch"], task, data.classes,
                    epoch=0, val=initial)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        record = {"epoch": epoch + 1, **train_epoch(lambda x, _s: model(x), data.train, parts, epoch, ctx, progress,
                                                    f"retrain {epoch + 1}/{cfg.epochs}")}
        val = evaluate(model, data.val, task, data.num_classes, device)
        record.update({f"val_{k}": v for k, v in val.items()})
        # The commit order: the log line and best.pt, then last.pt (see pathnas.train.spos).
        with disk_full_guard(out_dir):
            append_jsonl(out_dir / METRICS_LOG, record)
        if val[key] > best:
            best = val[key]
            save_subnet(out_dir / BEST_CHECKPOINT, model, meta["space_config"], meta["arch"], task, data.classes,
                        epoch=epoch + 1, val=val)
        save_checkpoint({"format": RETRAIN_FORMAT, **identity, "settings": settings,
                         "settings_hash": settings_hash(settings), "model": model.state_dict(),
                         "training": parts.state_dict(), "epoch": epoch + 1, "best_metric": best,
                         "rng": rng_state()}, last)
        log.info("retrain epoch %d: loss %.4f val %s %.2f", epoch + 1, record["train_loss"], key, val[key])
    best_model, best_meta = load_subnet(out_dir / BEST_CHECKPOINT)
    test = evaluate(best_model.to(device), data.test, task, data.num_classes, device)  # read once, here
    summary = {"arch": meta["arch"], "from_scratch": cfg.from_scratch, "epochs": cfg.epochs,
               "best_epoch": best_meta.get("epoch"), "metric_name": key, "val": best_meta.get("val"), "test": test,
               "skipped_files": len(data.skipped)}
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary
