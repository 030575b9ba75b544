"""The CUDA paths of the core: AMP in bf16, supernet and subnets on the GPU, extraction parity and BN
recalibration there, a few pretraining and retraining steps with a resume. Skipped without CUDA; run
them on a GPU machine with `pytest -m cuda tests/test_cuda.py`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pathnas.data import build_loaders, generate
from pathnas.settings import OptimConfig, PretrainConfig, RetrainConfig
from pathnas.spaces import build_supernet, space_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda", 0)
TINY = {
    "shufflenet": dict(width_mult=0.25, input_size=32, num_classes=4),
    "unet": dict(width_mult=0.25, input_size=32, num_classes=2),
    "vit": dict(embed_dim=48, input_size=32, patch_size=8, depth_choices=(2, 3), num_classes=4),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "classify"
    generate(root, "classify", n_per_class=12, image_size=32, seed=0)
    return root


@pytest.fixture
def exact_float32():
    """CPU and GPU results compared: no TF32 in cuDNN convolutions or matmuls while the test runs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tiny(name: str):
    torch.manual_seed(0)
    return build_supernet(space_config(name, **TINY[name]))


def test_amp_uses_bf16_where_the_gpu_has_it():
    from pathnas.train import build_training

    model = tiny("shufflenet").to(CUDA)
    parts = build_training(model, "classify", 4, OptimConfig(epochs=1, batch_size=8), 4, CUDA)
    if torch.cuda.is_bf16_supported():
        assert parts.amp_dtype == torch.bfloat16 and not parts.scaler.is_enabled()  # bf16 needs no loss scaling
    else:
        assert parts.amp_dtype == torch.float16 and parts.scaler.is_enabled()
    off = build_training(model, "classify", 4, OptimConfig(epochs=1, batch_size=8, amp=False), 4, CUDA)
    assert off.amp_dtype is None


@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit"])
def test_supernet_and_extracted_subnets_stay_on_the_gpu_and_agree(name, exact_float32):
    net = tiny(name).to(CUDA).eval()
    x = torch.randn(2, 3, 32, 32, device=CUDA)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        arch = net.sample(gen)
        subnet = net.extract(arch)
        assert all(p.device == x.device for p in subnet.parameters())
        assert all(b.device == x.device for b in subnet.buffers())
        with torch.no_grad():
            # cuDNN may pick different kernels for the two graphs: close, not bit-equal
            torch.testing.assert_close(subnet(x), net(x, arch), rtol=1e-4, atol=1e-5)


def test_bn_recalibration_on_the_gpu_matches_the_cpu(data, exact_float32):
    from pathnas.train import recalibrate_bn

    net = tiny("shufflenet")
    arch = net.space.decode("3570" * 5)
    loaders = build_loaders(data, 32, 8, seed=0)
    on_cpu = net.extract(arch)
    on_gpu = net.extract(arch).to(CUDA)
    assert recalibrate_bn(on_cpu, loaders.calib, 24, torch.device("cpu")) == 24
    assert recalibrate_bn(on_gpu, loaders.calib, 24, CUDA) == 24
    for (name, cpu_buffer), gpu_buffer in zip(on_cpu.named_buffers(), on_gpu.buffers()):
        assert gpu_buffer.device.type == "cuda"
        if cpu_buffer.is_floating_point():
            torch.testing.assert_close(gpu_buffer.cpu(), cpu_buffer, rtol=1e-3, atol=1e-3, msg=name)


def test_inherited_weight_evaluation_on_the_gpu(data):
    from pathnas.train import evaluate_architecture

    net = tiny("shufflenet").to(CUDA)
    loaders = build_loaders(data, 32, 8, seed=0)
    metrics = evaluate_architecture(net, "3570" * 5, loaders.calib, loaders.val, 4, CUDA, bn_images=16)
    assert 0 <= metrics["top1_pct"] <= 100 and metrics["bn_images"] == 16
    assert next(net.parameters()).device.type == "cuda"  # the supernet itself is not moved or changed


def test_pretraining_steps_on_the_gpu_with_amp_and_a_resume(data, tmp_path):
    from pathnas.train import load_supernet, pretrain

    space = space_config("shufflenet", **TINY["shufflenet"])

    def cfg(epochs: int) -> PretrainConfig:
        return PretrainConfig(data=data, run_dir=tmp_path / "run", epochs=epochs, batch_size=8, lr=0.05,
                              max_steps_per_epoch=3, workers=0, eval_paths=1, bn_images=16, device="cuda",
                              mixup_alpha=0.8, cutmix_alpha=1.0, warmup_epochs=0)

    first = pretrain(space, cfg(2), progress=False)
    assert [r["epoch"] for r in first.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in first.history)
    assert next(first.supernet.parameters()).device.type == "cuda"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["device"].startswith("cuda") and config["amp_dtype"] in ("torch.bfloat16", "torch.float16")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True, map_location="cpu")
    assert "cuda" in ckpt["rng"][0]  # the GPU's random state is saved too
    supernet, _ = load_supernet(tmp_path / "run" / "last.pt", map_location=CUDA)
    assert next(supernet.parameters()).device.type == "cuda"


def test_retraining_steps_on_the_gpu(data, tmp_path):
    from pathnas.retrain import retrain
    from pathnas.subnet import save_subnet

    net = tiny("shufflenet")
    subnet = tmp_path / "subnet.pt"
    save_subnet(subnet, net.extract("3570" * 5), net.config.model_dump(mode="json"), "3570" * 5, "classify",
                ["benign", "in_situ", "invasive", "normal"])
    cfg = RetrainConfig(data=data, epochs=2, batch_size=8, lr=0.01, warmup_epochs=0, bn_images=16, device="cuda",
                        max_steps_per_epoch=3)
    summary = retrain(subnet, cfg, tmp_path / "retrain")
    assert summary["best_epoch"] in (0, 1, 2) and 0 <= summary["test"]["top1_pct"] <= 100


def test_batch_augmentation_on_the_gpu_matches_the_cpu(exact_float32):
    from pathnas.data.shards import BatchAugment

    aug = BatchAugment(seed=3, input_size=24)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (6, 32, 32), generator=torch.Generator().manual_seed(1))
    cpu_x, cpu_y = aug(x, y, epoch=2, step=5)
    gpu_x, gpu_y = aug(x.to(CUDA), y.to(CUDA), epoch=2, step=5)
    assert gpu_x.device.type == "cuda" and torch.equal(gpu_y.cpu(), cpu_y)
    assert torch.allclose(gpu_x.cpu(), cpu_x, atol=1e-4)


def test_fair_pretraining_from_a_pack_on_the_gpu_with_amp_and_a_resume(data, tmp_path):
    from pathnas.data.shards import pack
    from pathnas.train import pretrain

    pack(data, tmp_path / "pack", size=32)
    space = space_config("shufflenet", **TINY["shufflenet"])

    def cfg(epochs: int) -> PretrainConfig:
        return PretrainConfig(data=tmp_path / "pack", run_dir=tmp_path / "run", epochs=epochs, batch_size=8,
                              lr=0.05, max_steps_per_epoch=3, workers=2, eval_paths=1, bn_images=16, device="cuda",
                              mixup_alpha=0.8, cutmix_alpha=1.0, warmup_epochs=0, sampler="fair")

    first = pretrain(space, cfg(1), progress=False)
    assert len(first.sampled_paths) == 3 * 4
    resumed = pretrain(space, cfg(1), resume=True, progress=False)  # nothing left to do: the same weights
    assert all(torch.equal(a, b) for a, b in zip(first.supernet.state_dict().values(),
                                                 resumed.supernet.state_dict().values()))
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in resumed.history)
