"""Runs that are reproducible, locked and never silently stale: same seed same weights, exact resume
after a kill anywhere in an epoch, settings changes refused, one writer per run directory, crash
windows and bad checkpoints, stage records that survive a moved run directory."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pathnas.checkpoint
import pathnas.retrain
import pathnas.train.spos as spos
from pathnas.checkpoint import DiskFullError
from pathnas.data import generate
from pathnas.errors import ConfigError, InvalidFileError, RunLockedError
from pathnas.io import read_jsonl
from pathnas.pipeline.layout import RunLayout
from pathnas.pipeline.record import portable, run_stage
from pathnas.retrain import retrain
from pathnas.settings import PretrainConfig, RetrainConfig
from pathnas.spaces import space_config
from pathnas.subnet import extract
from pathnas.train import load_supernet, pretrain
from test_pretrain import classify_data, settings as pretrain_settings  # noqa: F401 (a fixture)

# Dropout, mixup/cutmix (numpy) and augmentation (torch) all on: every random stream is exercised.
SPACE = space_config("shufflenet", width_mult=0.25, input_size=32, num_classes=4, dropout=0.2)


@pytest.fixture(scope="module")
def data(classify_data) -> Path:
    return classify_data


def settings(data: Path, run: Path, **overrides) -> PretrainConfig:
    return pretrain_settings(data, run, **{"epochs": 3, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, **overrides})


def max_delta(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 3-epoch pretraining: its weights and metrics are what every other run must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = pretrain(SPACE, settings(data, run), progress=False)
    return result.supernet.state_dict(), read_jsonl(run / "metrics.jsonl")


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_images_per_s"} for r in records]


def killed_at_epoch(monkeypatch, data: Path, run: Path, epoch: int) -> None:
    """A pretraining killed as epoch ``epoch`` (0-based) starts; the checkpoints of the epochs before stay."""
    original = spos._Trainer.train_epoch

    def killed(self, e, progress):
        if e == epoch:
            raise KeyboardInterrupt("killed")
        return original(self, e, progress)

    with monkeypatch.context() as patch:
        patch.setattr(spos._Trainer, "train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            pretrain(SPACE, settings(data, run), progress=False)


# -- same seed, same result ---------------------------------------------------------------------

def test_two_runs_with_the_same_seed_are_identical(data, reference, tmp_path):
    result = pretrain(SPACE, settings(data, tmp_path / "again"), progress=False)
    assert max_delta(result.supernet.state_dict(), reference[0]) == 0
    assert without_timing(read_jsonl(tmp_path / "again" / "metrics.jsonl")) == without_timing(reference[1])
    other = pretrain(SPACE, settings(data, tmp_path / "other", seed=1), progress=False)
    assert max_delta(other.supernet.state_dict(), reference[0]) > 0  # the seed is what decides


def test_a_run_killed_mid_epoch_resumes_to_exactly_the_same_weights(data, reference, tmp_path, monkeypatch):
    killed_at_epoch(monkeypatch, data, tmp_path / "run", 2)
    resumed = pretrain(SPACE, settings(data, tmp_path / "run"), resume=True, progress=False)
    assert max_delta(resumed.supernet.state_dict(), reference[0]) == 0
    assert without_timing(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == without_timing(reference[1])


def test_a_kill_between_the_log_line_and_the_checkpoint_is_redone_exactly(data, reference, tmp_path, monkeypatch):
    """The checkpoint is the commit point: metrics line and best.pt are written first, last.pt last."""
    original = spos.save_checkpoint
    written = []

    def killed_before_the_second_last_pt(ckpt, path):
        if Path(path).name == "last.pt" and ckpt["epoch"] == 2:
            assert [r["epoch"] for r in read_jsonl(Path(path).parent / "metrics.jsonl")] == [1, 2]
            raise KeyboardInterrupt("killed")
        written.append((Path(path).name, ckpt["epoch"]))
        return original(ckpt, path)

    monkeypatch.setattr(spos, "save_checkpoint", killed_before_the_second_last_pt)
    with pytest.raises(KeyboardInterrupt):
        pretrain(SPACE, settings(data, tmp_path / "run"), progress=False)
    assert ("last.pt", 1) in written and written.index(("best.pt", 1)) < written.index(("last.pt", 1))
    monkeypatch.setattr(spos, "save_checkpoint", original)
    resumed = pretrain(SPACE, settings(data, tmp_path / "run"), resume=True, progress=False)
    assert max_delta(resumed.supernet.state_dict(), reference[0]) == 0
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]  # once each


def test_checkpoints_hold_random_states_that_load_without_unpickling_code(data, tmp_path):
    pretrain(SPACE, settings(data, tmp_path / "run", epochs=1, max_steps_per_epoch=2), progress=False)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    (state,) = ckpt["rng"]
    assert {"torch", "numpy", "python"} <= state.keys() and isinstance(state["torch"], torch.Tensor)
    assert len(ckpt["settings_hash"]) == 64 and ckpt["settings"]["epochs"] == 1


# -- never silently stale ------------------------------------------------------------------------

def test_resume_with_more_epochs_is_refused_naming_the_schedule(data, tmp_path):
    pretrain(SPACE, settings(data, tmp_path / "run", epochs=2, max_steps_per_epoch=1, eval_paths=0), progress=False)
    with pytest.raises(ConfigError) as err:
        pretrain(SPACE, settings(data, tmp_path / "run", epochs=4, max_steps_per_epoch=1, eval_paths=0), resume=True,
                 progress=False)
    message = str(err.value)
    assert "last.pt was made with other settings" in message and "epochs 2 -> 4" in message
    assert "learning-rate schedule" in message and "another run directory" in message
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2  # untouched


def test_resume_on_another_data_set_is_refused(data, tmp_path):
    pretrain(SPACE, settings(data, tmp_path / "run", epochs=2, max_steps_per_epoch=1, eval_paths=0), progress=False)
    other = tmp_path / "other"  # the same file names and splits, other images
    generate(other, "classify", n_per_class=12, image_size=32, seed=5)
    with pytest.raises(ConfigError, match=r"settings: data '"):
        pretrain(SPACE, settings(other, tmp_path / "run", epochs=2, max_steps_per_epoch=1, eval_paths=0),
                 resume=True, progress=False)


def test_a_moved_data_set_and_more_loader_workers_resume_exactly(data, reference, tmp_path, monkeypatch):
    killed_at_epoch(monkeypatch, data, tmp_path / "run", 1)
    moved = tmp_path / "moved-data"
    shutil.copytree(data, moved)
    # Where the data lie and how many processes load them are not settings of the result.
    result = pretrain(SPACE, settings(moved, tmp_path / "run", workers=2), resume=True, progress=False)
    assert max_delta(result.supernet.state_dict(), reference[0]) == 0


def test_a_damaged_checkpoint_is_named_in_one_error(data, tmp_path):
    run = tmp_path / "run"
    pretrain(SPACE, settings(data, run, epochs=1, max_steps_per_epoch=1, eval_paths=0), progress=False)
    last = run / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(InvalidFileError, match=rf"supernet checkpoint {last} is damaged or truncated"):
        pretrain(SPACE, settings(data, run, epochs=1, max_steps_per_epoch=1, eval_paths=0), resume=True,
                 progress=False)
    result = subprocess.run(
        [sys.executable, "-m", "pathnas.cli", "pretrain", "--data", str(data), "--run-dir", str(run), "--epochs", "1",
         "--batch-size", "8", "--input-size", "32", "--width-mult", "0.25", "--device", "cpu", "--resume",
         "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(last) in lines[0], result.stderr


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 "
                                                  "vs 0; PytorchStreamWriter failed writing file data/3: file write "
                                                  "failed")])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(data, reference, tmp_path, monkeypatch, failure):
    run = tmp_path / "run"
    real_save = torch.save
    saves = []

    def full_disk_at_the_second_epoch(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            Path(f).write_bytes(b"partial")  # what a full disk leaves: the start of the file
            raise failure
        saves.append(obj.get("epoch"))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(pathnas.checkpoint.torch, "save", full_disk_at_the_second_epoch)
    with pytest.raises(DiskFullError) as err:
        pretrain(SPACE, settings(data, run), progress=False)
    assert str(err.value) == f"no space left in {run}; the previous checkpoint is kept"
    monkeypatch.setattr(pathnas.checkpoint.torch, "save", real_save)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))  # the partial file is gone
    resumed = pretrain(SPACE, settings(data, run), resume=True, progress=False)
    assert max_delta(resumed.supernet.state_dict(), reference[0]) == 0


def test_orphaned_temporaries_are_swept_when_a_run_starts(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    orphan = run / ".last.pt.k3j2.tmp"
    orphan.write_bytes(b"half a checkpoint")
    pretrain(SPACE, settings(data, run, epochs=1, max_steps_per_epoch=1, eval_paths=0), progress=False)
    assert not orphan.exists()


# -- one writer per run directory -----------------------------------------------------------------

def test_a_second_pretrain_on_the_same_directory_refuses_naming_the_holder(data, tmp_path, locked):
    run = tmp_path / "run"
    pid = locked(run, "pretrain")
    with pytest.raises(RunLockedError, match=rf"{run} is in use by PID {pid} \(pretrain\)"):
        pretrain(SPACE, settings(data, run, epochs=1), progress=False)
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()


def test_a_second_pipeline_refuses_before_doing_anything(tmp_path, locked):
    from pathnas.pipeline import run_pipeline

    run = tmp_path / "run"
    pid = locked(run)
    with pytest.raises(RunLockedError, match=rf"in use by PID {pid} \(pipeline\)"):
        run_pipeline(run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no data generated, no stage recorded


def test_a_stage_takes_the_run_directory_lock(tmp_path, locked):
    layout = RunLayout(tmp_path / "run")
    pid = locked(layout.root)
    with pytest.raises(RunLockedError, match=f"PID {pid}"):
        run_stage(layout, "extract", {"arch": "x"}, [], lambda: None)


# -- the pipeline checks every setting first ------------------------------------------------------

@pytest.mark.parametrize("overrides, fragment", [
    (dict(device="jetsn"), "unknown device 'jetsn'"),
    (dict(proposer="genetic"), "--proposer: Input should be"),
    (dict(budget_ms=-1.0), "--budget-ms: Input should be greater than 0"),
    (dict(formats=("onnx", "tflite")), "format 'tflite': allowed values are onnx, openvino, tensorrt"),
    (dict(precisions="fp64"), "precision 'fp64': allowed values are fp32, fp16, int8"),
    (dict(pretrain_epochs=0), "--pretrain-epochs: Input should be greater than or equal to 1"),
    (dict(space={"space": "unet", "input_size": 40}), "space 'unet' is for segment data"),
    (dict(space={"space": "shufflenet", "stage_channels": [8]}), "stage_channels has 1 entries"),
])
def test_the_pipeline_validates_every_setting_before_its_first_stage(tmp_path, overrides, fragment):
    from pathnas.errors import UserError
    from pathnas.pipeline import run_pipeline
    from pathnas.settings import PipelineSettings, validated

    with pytest.raises(UserError) as err:
        run_pipeline(tmp_path / "run", validated(PipelineSettings, "pipeline", **overrides), progress=False)
    assert fragment in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_pipeline_cli_names_a_misspelt_device_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pathnas.cli", "pipeline", "--run-dir", str(tmp_path / "run"),
                             "--device", "jetsn"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown device 'jetsn'"), result.stderr
    assert not (tmp_path / "run").exists()


# -- stage records survive a moved run directory ---------------------------------------------------

def test_settings_paths_are_hashed_relative_to_the_run_or_as_inputs(tmp_path):
    root, data = tmp_path / "run", tmp_path / "data"
    settings_ = {"run_dir": str(root / "supernet"), "data": str(data), "device": "cpu", "other": "/opt/x"}
    assert portable(settings_, root, {"data": data}) == {"run_dir": "<run>/supernet", "data": "<input:data>",
                                                         "device": "cpu", "other": "/opt/x"}


def test_a_moved_run_directory_reruns_no_stage(data, tmp_path, monkeypatch):
    from pathnas.pipeline import stages

    from pathnas.data import load_or_create_splits

    layout = RunLayout(tmp_path / "run")
    shutil.copytree(data, layout.root / "data")
    load_or_create_splits(layout.root / "data")  # as the pipeline does: drawn before any stage hashes the data

    def cfg(root: Path) -> PretrainConfig:
        return settings(root / "data", RunLayout(root).supernet_dir, epochs=1, max_steps_per_epoch=1, eval_paths=0)

    stages.stage_pretrain(layout, SPACE, cfg(layout.root), progress=False)
    moved = RunLayout(tmp_path / "elsewhere" / "moved")
    moved.root.parent.mkdir()
    shutil.move(layout.root, moved.root)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pretrain stage ran again after the run directory moved")

    monkeypatch.setattr("pathnas.train.pretrain", must_not_run)
    assert stages.stage_pretrain(moved, SPACE, cfg(moved.root), progress=False) == moved.supernet


# -- the pipeline trains from a pack of its data ----------------------------------------------------

def test_the_pipeline_trains_from_a_pack_and_keeps_the_folder_for_export(tmp_path):
    from pathnas.pipeline.run import _plan
    from pathnas.settings import PipelineSettings

    layout = RunLayout(tmp_path / "run")
    packed = _plan(layout, PipelineSettings())
    assert packed.pretrain.data == packed.search.data == packed.retrain.data == layout.pack
    assert packed.data == layout.data  # export, validation and the smoke test read image files
    folder = _plan(layout, PipelineSettings(pack_data=False))
    assert folder.pretrain.data == folder.retrain.data == layout.data


def test_the_pack_stage_packs_at_the_input_size_once_and_afresh_when_the_data_change(data, tmp_path):
    from pathnas.data import load_or_create_splits
    from pathnas.data.shards import open_pack
    from pathnas.pipeline import stages

    layout, source = RunLayout(tmp_path / "run"), tmp_path / "data"
    shutil.copytree(data, source)
    load_or_create_splits(source)  # as the pipeline does: drawn before any stage hashes the data
    assert stages.stage_pack(layout, source, 24, seed=0, skip_bad=False, progress=False) == layout.pack
    first = open_pack(layout.pack)
    assert first.size == 24 and first.splits["train"] == json.loads((source / "splits.json").read_text())["train"]
    written = layout.pack_index.stat().st_mtime_ns
    stages.stage_pack(layout, source, 24, seed=0, skip_bad=False, progress=False)
    assert layout.pack_index.stat().st_mtime_ns == written  # up to date: not packed again
    changed = source / first.splits["train"][0]
    changed.write_bytes((source / first.splits["train"][1]).read_bytes())
    stages.stage_pack(layout, source, 24, seed=0, skip_bad=False, progress=False)
    again = open_pack(layout.pack)  # a stale pack would fail verification; the stage packs afresh instead
    assert again.index["source_sha256"][0] == again.index["source_sha256"][1]


def test_the_pack_stage_refuses_a_disk_too_small_and_names_the_way_out(data, tmp_path, monkeypatch):
    from collections import namedtuple

    from pathnas.pipeline import stages

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"at 224 px needs [0-9.]+ MiB .*0\.0 MiB are free.*--no-pack-data"):
        stages.stage_pack(layout, data, 224, seed=0, skip_bad=False, progress=False)
    assert not layout.pack.exists()


def test_the_profile_stage_measures_a_missing_table_the_one_way_into_the_run(tmp_path, monkeypatch):
    from pathnas.pipeline import stages
    from pathnas.profiling import load_profile
    from pathnas.spaces import build_supernet

    supernet = build_supernet(space_config("shufflenet", width_mult=0.25, input_size=40, num_classes=3,
                                           stage_repeats=[1, 1, 1, 1]))
    calls = []

    def measured(profile, net, path):  # what a search that lacks a table calls too (profiling.ondemand)
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")

    monkeypatch.setattr("pathnas.profiling.ondemand.measure_missing_table", measured)
    layout = RunLayout(tmp_path / "run")
    table = stages.stage_profile(layout, load_profile("cpu"), supernet)
    assert calls == [table] and table.parent == layout.latency_dir
    assert stages.stage_profile(layout, load_profile("cpu"), supernet) == table and len(calls) == 1  # recorded


def test_a_pipeline_stage_moves_stale_training_aside_and_trains_afresh(data, tmp_path, caplog):
    from pathnas.data import load_or_create_splits
    from pathnas.pipeline import stages

    layout = RunLayout(tmp_path / "run")
    shutil.copytree(data, layout.root / "data")
    load_or_create_splits(layout.root / "data")
    cfg = settings(layout.root / "data", layout.supernet_dir, epochs=1, max_steps_per_epoch=1, eval_paths=0)
    stages.stage_pretrain(layout, SPACE, cfg, progress=False)
    before = layout.supernet.read_bytes()
    # the run's settings changed (say, the learning rate): the stage re-runs, and the old checkpoint is stale
    stages.stage_pretrain(layout, SPACE, cfg.model_copy(update={"lr": cfg.lr / 2}), progress=False)
    kept = [p for p in layout.root.iterdir() if p.name.startswith("supernet-before-")]
    assert len(kept) == 1 and (kept[0] / "last.pt").read_bytes() == before  # never deleted
    assert layout.supernet.exists() and layout.supernet.read_bytes() != before
    assert "lr" in caplog.text and str(kept[0]) in caplog.text


def test_a_stage_sweeps_orphaned_temporaries(tmp_path):
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    orphan = layout.root / ".stages.json.x1y2.tmp"
    orphan.write_text("{")
    run_stage(layout, "extract", {"arch": "x"}, [], lambda: None)
    assert not orphan.exists() and "extract" in json.loads(layout.stages.read_text())


# -- retraining ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subnet(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("supernet") / "run"
    pretrain(SPACE, settings(data, run, epochs=1, max_steps_per_epoch=2, eval_paths=0), progress=False)
    out = run.parent / "subnet.pt"
    extract(run / "last.pt", "3570" * 5, out)
    return out


def retrain_settings(data: Path, **overrides) -> RetrainConfig:
    base = dict(data=data, epochs=3, batch_size=8, lr=0.01, warmup_epochs=0, bn_images=16, device="cpu",
                mixup_alpha=0.8, cutmix_alpha=1.0)
    return RetrainConfig(**{**base, **overrides})


def test_retrain_is_reproducible_and_resumes_exactly(data, subnet, tmp_path, monkeypatch):
    first = retrain(subnet, retrain_settings(data), tmp_path / "a")
    second = retrain(subnet, retrain_settings(data), tmp_path / "b")
    weights = {d: torch.load(tmp_path / d / "last.pt", weights_only=True)["model"] for d in ("a", "b")}
    assert max_delta(weights["a"], weights["b"]) == 0 and first == second

    original = pathnas.retrain.train_epoch

    def killed_in_third_epoch(forward, loader, parts, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt("killed")
        return original(forward, loader, parts, epoch, *args, **kwargs)

    monkeypatch.setattr(pathnas.retrain, "train_epoch", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        retrain(subnet, retrain_settings(data), tmp_path / "c")
    monkeypatch.setattr(pathnas.retrain, "train_epoch", original)
    resumed = retrain(subnet, retrain_settings(data), tmp_path / "c")
    last = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["model"]
    assert max_delta(last, weights["a"]) == 0 and resumed == first
    assert [r["epoch"] for r in read_jsonl(tmp_path / "c" / "metrics.jsonl")] == [1, 2, 3]


def test_retrain_refuses_a_checkpoint_of_other_settings_or_another_subnet(data, subnet, tmp_path):
    out = tmp_path / "retrain"
    retrain(subnet, retrain_settings(data, epochs=1), out)
    with pytest.raises(ConfigError, match=r"settings: lr 0.01 -> 0.02"):
        retrain(subnet, retrain_settings(data, epochs=1, lr=0.02), out)
    other = tmp_path / "other.pt"
    supernet_ckpt = Path(torch.load(subnet, weights_only=True)["supernet"])
    extract(supernet_ckpt, "7777" * 5, other)
    with pytest.raises(ConfigError) as err:
        retrain(other, retrain_settings(data, epochs=1), out)
    assert "arch '35703570357035703570' -> '77777777777777777777'" in str(err.value)
    assert "subnet_sha256" in str(err.value)


def test_retrain_skips_bad_files_and_reports_them(data, subnet, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    victim = root / json.loads((root / "splits.json").read_text())["train"][0]
    victim.write_bytes(victim.read_bytes()[:50])
    with pytest.raises(Exception, match=f"{victim}: cannot read the file"):
        retrain(subnet, retrain_settings(root, epochs=1), tmp_path / "r1")
    summary = retrain(subnet, retrain_settings(root, epochs=1, skip_bad=True), tmp_path / "r2")
    assert summary["skipped_files"] == 1
    assert json.loads((root / "splits.json").read_text())["skipped"] == [victim.relative_to(root).as_posix()]


def test_loaded_supernet_keeps_the_checkpoint_settings(data, tmp_path):
    run = tmp_path / "run"
    pretrain(SPACE, settings(data, run, epochs=1, max_steps_per_epoch=1, eval_paths=0), progress=False)
    supernet, ckpt = load_supernet(run / "last.pt")
    assert supernet.config == SPACE and ckpt["settings"]["mixup_alpha"] == 0.8


# -- fair sampling: same seed, same result; a kill in the middle of an epoch ------------------------

def killed_mid_epoch(monkeypatch, cfg: PretrainConfig, epoch: int, step: int) -> None:
    """A pretraining killed inside epoch ``epoch`` (0-based) as step ``step`` starts: the steps before it
    changed the weights in memory only."""
    original = spos.train_epoch

    def dies(forward, loader, parts, e, *args, **kwargs):
        def forward_until(x, s, *rest):
            if e == epoch and s == step:
                raise KeyboardInterrupt("killed")
            return forward(x, s, *rest)
        return original(forward_until, loader, parts, e, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(spos, "train_epoch", dies)
        with pytest.raises(KeyboardInterrupt):
            pretrain(SPACE, cfg, progress=False)


def test_fair_sampling_is_reproducible_and_resumes_exactly_after_a_kill_mid_epoch(data, tmp_path, monkeypatch):
    fair = dict(epochs=2, max_steps_per_epoch=3, eval_paths=1, sampler="fair")
    first = pretrain(SPACE, settings(data, tmp_path / "first", **fair), progress=False)
    second = pretrain(SPACE, settings(data, tmp_path / "second", **fair), progress=False)
    assert max_delta(first.supernet.state_dict(), second.supernet.state_dict()) == 0
    killed_mid_epoch(monkeypatch, settings(data, tmp_path / "killed", **fair), epoch=1, step=1)
    resumed = pretrain(SPACE, settings(data, tmp_path / "killed", **fair), resume=True, progress=False)
    assert max_delta(resumed.supernet.state_dict(), first.supernet.state_dict()) == 0
    assert (without_timing(read_jsonl(tmp_path / "killed" / "metrics.jsonl"))
            == without_timing(read_jsonl(tmp_path / "first" / "metrics.jsonl")))
    assert resumed.sampled_paths == first.sampled_paths[len(first.sampled_paths) // 2:]


def test_a_pack_gives_the_same_result_every_time_and_resumes_exactly(data, tmp_path, monkeypatch):
    from pathnas.data.shards import pack

    pack(data, tmp_path / "pack", size=32)
    cfg = dict(epochs=2, max_steps_per_epoch=3, eval_paths=1)
    first = pretrain(SPACE, settings(tmp_path / "pack", tmp_path / "first", **cfg), progress=False)
    second = pretrain(SPACE, settings(tmp_path / "pack", tmp_path / "second", **cfg, workers=2), progress=False)
    assert max_delta(first.supernet.state_dict(), second.supernet.state_dict()) == 0  # workers change nothing
    killed_mid_epoch(monkeypatch, settings(tmp_path / "pack", tmp_path / "killed", **cfg), epoch=1, step=2)
    resumed = pretrain(SPACE, settings(tmp_path / "pack", tmp_path / "killed", **cfg), resume=True, progress=False)
    assert max_delta(resumed.supernet.state_dict(), first.supernet.state_dict()) == 0
    assert (without_timing(read_jsonl(tmp_path / "killed" / "metrics.jsonl"))
            == without_timing(read_jsonl(tmp_path / "first" / "metrics.jsonl")))
    with pytest.raises(ConfigError, match=r"settings: data '"):  # the folder is another data set's identity
        pretrain(SPACE, settings(data, tmp_path / "first", **cfg), resume=True, progress=False)
