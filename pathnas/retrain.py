"""Retraining the extracted subnet as a standalone model.

Starts from the inherited supernet weights (after BN recalibration) unless asked to start
from scratch; selects the best epoch on VAL; reads TEST once, at the end, with the best
weights. A checkpoint is written atomically every epoch and a killed run resumes.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from .checkpoint import resume_training, save_checkpoint
from .errors import ConfigError
from .io import append_jsonl, write_json_atomic
from .subnet import build_subnet, load_subnet, save_subnet
from .settings import RetrainConfig
from .train import build_training, evaluate, primary_metric, recalibrate_bn, train_epoch
from .train.distributed import DistContext, resolve_device

log = logging.getLogger("pathnas.retrain")

RETRAIN_FORMAT = "pathnas-retrain/1"


def retrain(subnet_path: Path, cfg: RetrainConfig, out_dir: Path, progress=None) -> dict:
    """Train into ``out_dir`` (last.pt, best.pt, metrics.jsonl, summary.json); returns the summary."""
    from .data import build_loaders

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, meta = load_subnet(subnet_path)
    if cfg.from_scratch:
        model = build_subnet(meta["space_config"], meta["arch"])
    data = build_loaders(cfg.data, meta["space_config"]["input_size"], cfg.batch_size, seed=cfg.seed,
                         workers=cfg.workers)
    if data.classes != meta["classes"] and meta["classes"]:
        raise ConfigError(f"{cfg.data} has classes {data.classes}, the subnet was built for {meta['classes']}")
    model.to(device)
    task, key = meta["task"], primary_metric(meta["task"])
    parts = build_training(model, task, data.num_classes, cfg, len(data.train), device)
    ctx = DistContext(0, 1, 0, device)
    start_epoch, best = 0, -math.inf
    last = out_dir / "last.pt"
    identity = {"arch": meta["arch"], "space_config": meta["space_config"]}
    if last.exists():
        start_epoch, best = resume_training(last, RETRAIN_FORMAT, "retrain", model, parts, out_dir / "metrics.jsonl",
                                            identity, map_location=device)
        log.info("retrain: resumed after epoch %d", start_epoch)
    elif not cfg.from_scratch:
        recalibrate_bn(model, data.calib, cfg.bn_images, device)  # inherited BN stats mix every path
    if start_epoch == 0:
        initial = evaluate(model, data.val, task, data.num_classes, device)
        best = initial[key]
        save_subnet(out_dir / "best.pt", model, meta["space_config"], meta["arch"], task, data.classes,
                    epoch=0, val=initial)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        record = {"epoch": epoch + 1, **train_epoch(lambda x, _s: model(x), data.train, parts, epoch, ctx, progress,
                                                    f"retrain {epoch + 1}/{cfg.epochs}")}
        val = evaluate(model, data.val, task, data.num_classes, device)
        record.update({f"val_{k}": v for k, v in val.items()})
        if val[key] > best:
            best = val[key]
            save_subnet(out_dir / "best.pt", model, meta["space_config"], meta["arch"], task, data.classes,
                        epoch=epoch + 1, val=val)
        save_checkpoint({"format": RETRAIN_FORMAT, **identity, "model": model.state_dict(),
                         "training": parts.state_dict(), "epoch": epoch + 1, "best_metric": best}, last)
        append_jsonl(out_dir / "metrics.jsonl", record)
        log.info("retrain epoch %d: loss %.4f val %s %.2f", epoch + 1, record["train_loss"], key, val[key])
    best_model, best_meta = load_subnet(out_dir / "best.pt")
    test = evaluate(best_model.to(device), data.test, task, data.num_classes, device)  # read once, here
    summary = {"arch": meta["arch"], "from_scratch": cfg.from_scratch, "epochs": cfg.epochs,
               "best_epoch": best_meta.get("epoch"), "metric_name": key, "val": best_meta.get("val"), "test": test}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary
