"""Supernet pretraining: checkpoints, metrics log, resume after a crash, DDP with identical paths."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pathnas.data import generate
from pathnas.spaces import build_supernet, space_config
from pathnas.train import PretrainConfig, load_supernet, pretrain
import pathnas.train.spos as spos

TINY_SHUFFLE = dict(width_mult=0.25, input_size=32, num_classes=4)


@pytest.fixture(scope="module")
def classify_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "classify"
    generate(root, "classify", n_per_class=12, image_size=32, seed=0)
    return root


def settings(data: Path, run_dir: Path, **overrides) -> PretrainConfig:
    base = dict(data=data, run_dir=run_dir, epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, workers=0,
                eval_paths=1, bn_images=16, device="cpu")
    return PretrainConfig(**{**base, **overrides})


def test_pretrain_writes_checkpoints_and_metrics(classify_data, tmp_path):
    result = pretrain(space_config("shufflenet", **TINY_SHUFFLE), settings(classify_data, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.json"} <= {p.name for p in run.iterdir()}
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["train_loss"] > 0 and 0 <= r["val_top1_pct"] <= 100 for r in history)
    supernet, ckpt = load_supernet(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["classes"] == ["benign", "in_situ", "invasive", "normal"]
    for key, value in result.supernet.state_dict().items():
        assert torch.equal(value, supernet.state_dict()[key]), key
    assert not list(run.glob(".*.tmp"))  # nothing half-written left behind


def test_an_existing_run_is_not_overwritten(classify_data, tmp_path):
    cfg = settings(classify_data, tmp_path / "run", epochs=1, max_steps_per_epoch=1, eval_paths=0)
    pretrain(space_config("shufflenet", **TINY_SHUFFLE), cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(space_config("shufflenet", **TINY_SHUFFLE), cfg, progress=False)


def test_resume_after_a_crash_keeps_finished_epochs(classify_data, tmp_path, monkeypatch):
    space = space_config("shufflenet", **TINY_SHUFFLE)
    reference = pretrain(space, settings(classify_data, tmp_path / "ref", eval_paths=0), progress=False)

    original = spos._Trainer.train_epoch

    def crash_in_second_epoch(self, epoch, progress):
        if epoch == 1:
            raise KeyboardInterrupt("killed")
        return original(self, epoch, progress)

    monkeypatch.setattr(spos._Trainer, "train_epoch", crash_in_second_epoch)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pretrain(space, settings(classify_data, run, eval_paths=0), progress=False)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(spos._Trainer, "train_epoch", original)

    resumed = pretrain(space, settings(classify_data, run, eval_paths=0), resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    steps = len(reference.sampled_paths) // 2
    # The resumed epoch trains exactly the paths the uninterrupted run trained in its second epoch.
    assert resumed.sampled_paths == reference.sampled_paths[steps:]


def test_resume_refuses_another_space_configuration(classify_data, tmp_path):
    cfg = settings(classify_data, tmp_path / "run", epochs=1, max_steps_per_epoch=1, eval_paths=0)
    pretrain(space_config("shufflenet", **TINY_SHUFFLE), cfg, progress=False)
    other = space_config("shufflenet", **{**TINY_SHUFFLE, "width_mult": 0.5})
    with pytest.raises(ValueError, match="width_mult"):
        pretrain(other, cfg, resume=True, progress=False)


def test_wrong_task_for_the_space_is_refused(classify_data, tmp_path):
    with pytest.raises(ValueError, match="space 'unet' is for segment data"):
        pretrain(space_config("unet", width_mult=0.25, input_size=32, num_classes=4),
                 settings(classify_data, tmp_path / "run"), progress=False)


def test_segmentation_supernet_trains(tmp_path):
    root = tmp_path / "seg"
    generate(root, "segment", n_per_class=3, image_size=32, seed=0)
    result = pretrain(space_config("unet", width_mult=0.25, input_size=32, num_classes=2),
                      settings(root, tmp_path / "run", epochs=1, batch_size=4), progress=False)
    assert 0 <= result.history[-1]["val_dice_pct"] <= 100


# -- DDP: two processes, gloo, CPU ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different local randomness (mixup, dropout) on purpose
    cfg = settings(Path(data), Path(out) / "run", epochs=1, max_steps_per_epoch=3, eval_paths=0)
    result = pretrain(space_config("shufflenet", **TINY_SHUFFLE), cfg, progress=False)
    torch.save({"state": result.supernet.state_dict(), "paths": result.sampled_paths}, Path(out) / f"rank{rank}.pt")
    assert not torch.distributed.is_initialized()  # pretrain leaves no process group behind


def test_ddp_ranks_train_the_same_paths_and_end_identical(classify_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(classify_data), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["paths"] == r1["paths"] and len(r0["paths"]) >= 2
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key


# -- fair sampling (FairNAS strict fairness) -------------------------------------------------

@pytest.mark.parametrize("space_name", ["shufflenet", "unet"])
def test_fair_paths_use_every_choice_of_every_layer_exactly_once(space_name):
    space = build_supernet(space_config(space_name, width_mult=0.25, input_size=32)).space
    for step in range(5):
        paths = spos.fair_paths(space, spos.path_generator(0, 0, step))
        assert len(paths) == spos.fair_path_count(space) == 4
        for pos, decision in enumerate(space.decisions):
            assert sorted(map(str, (p.values[pos] for p in paths))) == sorted(map(str, decision.values)), pos
    again = spos.fair_paths(space, spos.path_generator(0, 0, 4))
    assert [p.code for p in again] == [p.code for p in paths]  # a function of (seed, epoch, step)
    assert [p.code for p in spos.fair_paths(space, spos.path_generator(0, 1, 4))] != [p.code for p in paths]


def test_fair_paths_in_a_conditional_space_train_every_choice_at_least_once():
    space = build_supernet(space_config("vit", embed_dim=48, input_size=32, patch_size=8)).space
    paths = spos.fair_paths(space, spos.path_generator(0, 0, 0))
    assert len(paths) == 4
    depth = 0  # the depth decision comes first; every depth appears
    assert {p.values[depth] for p in paths} == set(space.decisions[depth].values)
    for p in paths:  # each is a valid member of the space (blocks beyond its depth left out)
        assert space.decode(p.code) == p


def test_fair_pretraining_trains_each_step_on_a_fair_set_of_paths(classify_data, tmp_path):
    space = space_config("shufflenet", **TINY_SHUFFLE)
    cfg = settings(classify_data, tmp_path / "run", epochs=1, max_steps_per_epoch=3, eval_paths=0, sampler="fair")
    result = pretrain(space, cfg, progress=False)
    net = result.supernet
    assert len(result.sampled_paths) == 3 * 4
    for step in range(3):
        group = [net.space.decode(c) for c in result.sampled_paths[4 * step: 4 * step + 4]]
        assert [a.code for a in group] == [a.code for a in spos.fair_paths(net.space, spos.path_generator(0, 0, step))]
        for pos, decision in enumerate(net.space.decisions):
            assert len({a.values[pos] for a in group}) == len(decision.options)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["sampler"] == "fair"


def test_a_resume_with_the_other_sampler_is_refused(classify_data, tmp_path):
    space = space_config("shufflenet", **TINY_SHUFFLE)
    cfg = settings(classify_data, tmp_path / "run", epochs=2, max_steps_per_epoch=1, eval_paths=0)
    pretrain(space, cfg, progress=False)
    with pytest.raises(ValueError, match=r"sampler 'uniform' -> 'fair'.*one path sampler"):
        pretrain(space, cfg.model_copy(update={"sampler": "fair"}), resume=True, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2  # untouched


# -- skip-balanced sampling ---------------------------------------------------------------------------

def test_balanced_paths_draw_the_number_of_skips_uniformly():
    space = build_supernet(space_config("shufflenet", width_mult=0.25, input_size=32, stage_repeats=[1, 1, 2, 1])).space
    draws = [spos.balanced_path(space, spos.path_generator(0, 0, step)) for step in range(1000)]
    counts = [sum(v == "id" for v in a.values) for a in draws]
    share = [counts.count(k) / len(counts) for k in range(len(space) + 1)]
    assert all(abs(s - 1 / 6) < 0.05 for s in share), share  # each count of skips in 0..5 a sixth of the time
    assert share[4] + share[5] > 0.25  # uniform SPOS: four or five skips in 1.6 % of its steps
    for pos, decision in enumerate(space.decisions):  # every option of every layer is still trained
        assert {a.values[pos] for a in draws} == set(decision.values)
    again = spos.balanced_path(space, spos.path_generator(0, 0, 7))
    assert again == draws[7]  # a function of (seed, epoch, step), as every rank needs
    vit = build_supernet(space_config("vit", embed_dim=48, input_size=32, patch_size=8)).space
    with pytest.raises(ValueError, match="sampler 'balanced' needs decisions with an 'id' option"):
        spos.balanced_path(vit, spos.path_generator(0, 0, 0))


def test_balanced_pretraining_trains_the_balanced_paths(classify_data, tmp_path):
    space = space_config("shufflenet", **TINY_SHUFFLE)
    cfg = settings(classify_data, tmp_path / "run", epochs=1, max_steps_per_epoch=3, eval_paths=0, sampler="balanced")
    result = pretrain(space, cfg, progress=False)
    expected = [spos.balanced_path(result.supernet.space, spos.path_generator(0, 0, step)).code for step in range(3)]
    assert result.sampled_paths == expected
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["sampler"] == "balanced"


def _fair_ddp_worker(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    cfg = settings(Path(data), Path(out) / "run", epochs=1, max_steps_per_epoch=2, eval_paths=0, sampler="fair")
    result = pretrain(space_config("shufflenet", **TINY_SHUFFLE), cfg, progress=False)
    torch.save({"state": result.supernet.state_dict(), "paths": result.sampled_paths}, Path(out) / f"rank{rank}.pt")


def test_ddp_ranks_agree_on_the_fair_paths_and_end_identical(classify_data, tmp_path):
    """Gradients of the first passes are accumulated without all-reduce (no_sync); the last pass's
    all-reduce must still bring every parameter, used in any pass, to the same value on both ranks."""
    mp.spawn(_fair_ddp_worker, args=(2, _free_port(), str(classify_data), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["paths"] == r1["paths"] and len(r0["paths"]) == 2 * 4
    start = build_supernet(space_config("shufflenet", **TINY_SHUFFLE)).state_dict()
    moved = 0
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
        moved += not torch.equal(r0["state"][key], start[key]) if "weight" in key else 0
    assert moved > 0
