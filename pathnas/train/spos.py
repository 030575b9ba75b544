"""Supernet pretraining: one uniformly sampled path per step (SPOS), fair sampling (FairNAS), or
skip-balanced sampling (the number of 'id' layers uniform, so skip-heavy paths are trained too).

Every rank draws the path(s) of step s of epoch e from a generator seeded by
(seed, e, s), so all ranks train the same paths at every step without communicating
(the reference code let ranks diverge), and a resumed run draws the same paths as an
uninterrupted one. With ``sampler="fair"`` a step trains m paths on the same batch that
together use every choice of every layer exactly once (FairNAS's strict fairness), their
gradients added up before one update; the checkpoint records the sampler and a resume with
the other one is refused.

Same seed, same result: the weights are initialised from the seed, the data order and
augmentation are functions of (seed, epoch) (pathnas.data), and the global random streams
(dropout, mixup) are seeded from it and saved in every checkpoint, so on a CPU a killed and
resumed run ends with exactly the weights of an uninterrupted one. Each epoch ends with its
metrics line and best.pt, then last.pt: the checkpoint is the commit point, and a resume after
a kill anywhere in between redoes the epoch exactly.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import (BEST_CHECKPOINT, LAST_CHECKPOINT, METRICS_LOG, disk_full_guard, load_checkpoint,
                          resume_training, save_checkpoint, settings_hash)
from ..data import SPLITS_FILE, build_loaders, data_fingerprint, load_or_create_splits
from ..errors import AlreadyExistsError, ConfigError
from ..io import append_jsonl, read_jsonl, sweep_temporaries, write_json_atomic
from ..lock import RunLock
from ..settings import PretrainConfig
from ..spaces import Architecture, SearchSpace, SpaceConfig, Supernet, build_supernet, config_from_dict
from .distributed import DistContext, barrier, broadcast_buffers, distributed_session
from .evaluate import evaluate_architecture, primary_metric
from .loop import build_training, train_epoch
from .rng import rng_state, seed_everything, set_rng_state

log = logging.getLogger("pathnas.pretrain")

CHECKPOINT_FORMAT = "pathnas-supernet/1"
RUN_CONFIG = "config.json"  # what a pretraining ran with (space, settings, world size, device)


@dataclass
class PretrainResult:
    supernet: Supernet
    run_dir: Path
    history: list[dict]
    sampled_paths: list[str] = field(default_factory=list)  # this process's paths, in order


def path_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"spos-path:{seed}:{epoch}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def fair_path_count(space: SearchSpace) -> int:
    """How many paths a fair step trains: the most options any decision has."""
    return max(len(d.options) for d in space.decisions)


def fair_paths(space: SearchSpace, generator: torch.Generator) -> list[Architecture]:
    """FairNAS's strict fairness: m paths that together use every option of every decision exactly
    once, m being the number of options (4 in the ShuffleNet and U-Net spaces).

    Each decision's options are put in a random order of their own, and path k takes the k-th of
    every decision. Where decisions have fewer options than m (ViT: depth 3, heads 4, MLP ratio 3),
    some of their options are drawn twice, so every option is still trained at least once per step;
    a decision that does not apply to a path (a ViT block beyond its depth) is left out of it.
    """
    m = fair_path_count(space)
    columns = []
    for decision in space.decisions:
        n = len(decision.options)
        column = list(range(n)) + torch.randint(n, (m - n,), generator=generator).tolist()
        columns.append([column[i] for i in torch.randperm(m, generator=generator).tolist()])
    paths = []
    for k in range(m):
        values: list = [d.options[col[k]].value for d, col in zip(space.decisions, columns)]
        paths.append(space.from_values([v if on else None for v, on in zip(values, space.active(values))]))
    return paths


def balanced_path(space: SearchSpace, generator: torch.Generator) -> Architecture:
    """One path whose number of 'id' (skip) layers is uniform over 0..K, K being the decisions that offer
    'id'; which layers take it is uniform, the others draw uniformly among their other options.

    Uniform SPOS trains a path with four skips in five layers in 1.6 % of its steps (15/1024 + 1/1024),
    so the layers after a run of skips, and the head, rarely see the features such a path makes; here
    every count of skips has 1/(K+1) of the steps. The price: each kernel option of a layer is trained in
    1/6 of the steps instead of 1/4 (the 'id' option in half of them)."""
    skippable = [i for i, d in enumerate(space.decisions) if "id" in d.values]
    if not skippable:
        raise ConfigError(f"sampler 'balanced' needs decisions with an 'id' option; the {space.name} space has none "
                          f"(use uniform or fair)")
    count = int(torch.randint(len(skippable) + 1, (1,), generator=generator))
    skipped = {skippable[j] for j in torch.randperm(len(skippable), generator=generator)[:count].tolist()}
    values: list = []
    for i, decision in enumerate(space.decisions):
        others = [v for v in decision.values if v != "id"]
        values.append("id" if i in skipped else others[int(torch.randint(len(others), (1,), generator=generator))])
    return space.from_values(values)


def load_supernet(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Supernet, dict]:
    """Rebuild a supernet from a checkpoint written by ``pretrain``, on the device ``map_location``;
    returns it and the checkpoint."""
    ckpt = load_checkpoint(path, CHECKPOINT_FORMAT, "supernet", map_location)
    supernet = build_supernet(config_from_dict(ckpt["space_config"]))
    supernet.load_state_dict(ckpt["model"])
    return supernet.to(map_location), ckpt


class _Trainer:
    def __init__(self, space_config: SpaceConfig, cfg: PretrainConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx
        self.run_dir = Path(cfg.run_dir)
        if ctx.is_main:
            load_or_create_splits(cfg.data)  # drawn once, by one process, before anyone reads them
        barrier(ctx)
        self.data = build_loaders(
            cfg.data, space_config.input_size, cfg.batch_size, seed=cfg.seed, workers=cfg.workers,
            skip_bad=cfg.skip_bad, distributed=ctx.distributed, record_skipped=ctx.is_main,
        )
        barrier(ctx)  # rank 0 may have listed skipped files in splits.json: every rank fingerprints the same
        seed_everything(cfg.seed, "init")  # the same initial weights on every rank and in every run
        self.supernet = build_supernet(space_config)
        if self.supernet.task != self.data.task:
            raise ConfigError(
                f"space {space_config.space!r} is for {self.supernet.task} data, but {cfg.data} holds "
                f"{self.data.task} data"
            )
        if space_config.num_classes != self.data.num_classes:
            raise ConfigError(
                f"space config has num_classes={space_config.num_classes} but {cfg.data} has "
                f"{self.data.num_classes} classes ({', '.join(self.data.classes)})"
            )
        self.task = self.data.task
        self.settings = {**cfg.result_settings(), "data": data_fingerprint(cfg.data), "world_size": ctx.world_size}
        self.supernet.to(ctx.device)
        self.model = (
            DistributedDataParallel(
                self.supernet, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=True,  # a single path leaves the other choices without gradients
            )
            if ctx.distributed
            else self.supernet
        )
        self.parts = build_training(
            self.supernet, self.task, self.data.num_classes, cfg, len(self.data.train), ctx.device
        )
        # Fixed paths to track on val across epochs: the same ones every epoch, so the curve is comparable.
        eval_gen = path_generator(cfg.seed, -1, 0)
        self.eval_archs = [self.supernet.sample(eval_gen) for _ in range(cfg.eval_paths)]
        self.start_epoch = 0
        self.best_metric = -math.inf
        self.sampled_paths: list[str] = []
        seed_everything(cfg.seed, "train", ctx.rank)  # dropout, mixup: each rank its own stream

    # -- checkpoints -----------------------------------------------------------------
    def checkpoint(self, epoch: int, metrics: dict, rng_states: list[dict]) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "sampler": self.cfg.sampler,
            "space_config": self.supernet.config.model_dump(mode="json"),
            "train_config": self.cfg.model_dump(mode="json"),
            "task": self.task,
            "classes": self.data.classes,
            "epoch": epoch,  # completed epochs
            "metrics": metrics,
            "best_metric": self.best_metric,
            "model": self.supernet.state_dict(),
            "training": self.parts.state_dict(),
            "settings": self.settings,
            "settings_hash": settings_hash(self.settings),
            "rng": rng_states,
        }

    def resume(self) -> None:
        path = self.run_dir / LAST_CHECKPOINT
        if not path.exists():
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)
            return
        resumed = resume_training(
            path, CHECKPOINT_FORMAT, "supernet", self.supernet, self.parts,
            self.run_dir / METRICS_LOG if self.ctx.is_main else None,
            {"space_config": self.supernet.config.model_dump(mode="json"), "sampler": self.cfg.sampler},
            self.settings,
            map_location=self.ctx.device,
        )
        self.start_epoch, self.best_metric = resumed.epoch, resumed.best_metric
        set_rng_state(resumed.checkpoint["rng"][self.ctx.rank])  # the world size is part of the settings
        log.info("resumed from %s after epoch %d", path, self.start_epoch)

    # -- the loop ------------------------------------------------------------------------
    def train_epoch(self, epoch: int, progress) -> dict:
        self.model.train()
        fair, balanced = self.cfg.sampler == "fair", self.cfg.sampler == "balanced"
        step_paths: dict[int, list[Architecture]] = {}

        def forward(x: torch.Tensor, step: int, k: int = 0) -> torch.Tensor:
            if step not in step_paths:  # drawn once per step: the same on every rank and in a resumed run
                generator = path_generator(self.cfg.seed, epoch, step)
                step_paths.clear()
                step_paths[step] = (fair_paths(self.supernet.space, generator) if fair
                                    else [balanced_path(self.supernet.space, generator)] if balanced
                                    else [self.supernet.sample(generator)])
            arch = step_paths[step][k]
            self.sampled_paths.append(arch.code)
            return self.model(x, arch)

        no_sync = self.model.no_sync if isinstance(self.model, DistributedDataParallel) else None
        passes = fair_path_count(self.supernet.space) if fair else 1
        return train_epoch(
            forward, self.data.train, self.parts, epoch, self.ctx, progress, f"epoch {epoch + 1}/{self.cfg.epochs}",
            passes=passes, no_sync=no_sync,
        )

    def validate(self) -> dict:
        if not self.eval_archs:
            return {}
        key = primary_metric(self.task)
        per_path = {}
        for arch in self.eval_archs:
            m = evaluate_architecture(
                self.supernet, arch, self.data.calib, self.data.val, self.data.num_classes, self.ctx.device,
                self.cfg.bn_images,
            )
            per_path[arch.code] = round(m[key], 3)
        return {f"val_{key}": sum(per_path.values()) / len(per_path), "val_paths": per_path}

    def gather_rng_states(self) -> list[dict]:
        """Every rank's global random state, in rank order (rank 0 writes them all)."""
        if not self.ctx.distributed:
            return [rng_state()]
        states: list = [None] * self.ctx.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def run(self, progress) -> list[dict]:
        cfg, ctx = self.cfg, self.ctx
        for epoch in range(self.start_epoch, cfg.epochs):
            record = {"epoch": epoch + 1, **self.train_epoch(epoch, progress)}
            broadcast_buffers(self.supernet, ctx)
            if ctx.is_main:
                record.update(self.validate())
            rng_states = self.gather_rng_states()  # after validation: where a resumed run takes over
            if ctx.is_main:
                metric = record.get(f"val_{primary_metric(self.task)}")
                improved = metric is not None and metric > self.best_metric
                if improved:
                    self.best_metric = metric
                ckpt = self.checkpoint(epoch + 1, record, rng_states)
                # The commit order: the log line and best.pt, then last.pt. A kill before last.pt is
                # replaced leaves the previous checkpoint, whose resume cuts the log back and redoes the epoch.
                with disk_full_guard(self.run_dir):
                    append_jsonl(self.run_dir / METRICS_LOG, record)
                if improved or metric is None:
                    save_checkpoint(ckpt, self.run_dir / BEST_CHECKPOINT)
                save_checkpoint(ckpt, self.run_dir / LAST_CHECKPOINT)
                log.info("epoch %d: %s", epoch + 1, _summary(record))
            barrier(ctx)
        return read_jsonl(self.run_dir / METRICS_LOG) if ctx.is_main else []


def _summary(record: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "val_paths")


def pretrain(
    space_config: SpaceConfig, cfg: PretrainConfig, resume: bool = False, progress: bool = True
) -> PretrainResult:
    """Train a supernet into ``cfg.run_dir`` (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_LOG, RUN_CONFIG).

    Under torchrun every process calls this; rank 0 writes the files and holds the run directory's
    lock (RUN/.lock) for the whole run, so a second ``pretrain`` on it refuses, naming this process.
    """
    run_dir = Path(cfg.run_dir)
    with distributed_session(cfg.device) as ctx:
        if not ctx.is_main:
            return _pretrain(space_config, cfg, ctx, resume, progress)
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir, "pretrain"):
            return _pretrain(space_config, cfg, ctx, resume, progress)


def _pretrain(space_config: SpaceConfig, cfg: PretrainConfig, ctx: DistContext, resume: bool,
              progress: bool) -> PretrainResult:
    run_dir = Path(cfg.run_dir)
    if ctx.is_main:
        if (run_dir / LAST_CHECKPOINT).exists() and not resume:
            raise AlreadyExistsError(
                f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose another --run-dir"
            )
        sweep_temporaries(run_dir)  # what a killed run was writing; the lock says no one writes now
    barrier(ctx)
    trainer = _Trainer(space_config, cfg, ctx)
    if resume:
        trainer.resume()
    if trainer.data.skipped and ctx.is_main:
        log.warning("skipped %d unusable file(s); they are listed in %s", len(trainer.data.skipped),
                    Path(cfg.data) / SPLITS_FILE)
    if ctx.is_main:
        write_json_atomic(run_dir / RUN_CONFIG, {
            "space_config": space_config.model_dump(mode="json"),
            "train_config": cfg.model_dump(mode="json"),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
            "amp_dtype": str(trainer.parts.amp_dtype) if trainer.parts.amp_dtype else None,
            "classes": trainer.data.classes,
            "skipped_images": [str(p) for p in trainer.data.skipped],
        })
    if progress and ctx.is_main:
        from pathnas.progress import progress_bar

        with progress_bar() as bar:
            history = trainer.run(bar)
    else:
        history = trainer.run(None)
    return PretrainResult(trainer.supernet, run_dir, history, trainer.sampled_paths)


