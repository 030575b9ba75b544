"""Search spaces: codes, strict validation, sampling, extraction parity and exportability."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathnas.spaces import (
    ArchitectureError,
    ConfigError,
    build_supernet,
    space_config,
)

# CPU-sized configurations of the three spaces (same code paths as the defaults). "vit" keeps every
# head 8 wide (AutoFormer's convention); "vit-split" splits the width over the heads, as the paper does.
TINY = {
    "shufflenet": dict(width_mult=0.25, input_size=32),
    "unet": dict(width_mult=0.25, input_size=32),
    "vit": dict(embed_dim=32, head_dim=8, input_size=32, patch_size=8, depth_choices=(2, 3, 4)),
    "vit-split": dict(embed_dim=48, input_size=32, patch_size=8, depth_choices=(2, 3, 4)),
}


def tiny_supernet(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_supernet(space_config(name.split("-")[0], **TINY[name]))


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so parity checks are not passing on identity BNs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# -- codes and validation ---------------------------------------------------------------------

def test_default_spaces_match_the_paper():
    shuffle = build_supernet(space_config("shufflenet")).space
    assert len(shuffle) == 20 and shuffle.size() == 4**20
    assert all(d.values == ("id", 3, 5, 7) for d in shuffle.decisions)
    unet = build_supernet(space_config("unet", width_mult=0.25)).space
    assert len(unet) == 8 and unet.size() == 4**8
    vit = build_supernet(space_config("vit", embed_dim=64, head_dim=16)).space
    assert vit.decisions[0].values == (12, 13, 14)
    assert vit.decisions[1].values == (3, 4, 6, 8) and vit.decisions[2].values == (3, 4, 5)
    assert vit.size() == sum(12**d for d in (12, 13, 14))


def test_code_round_trip_and_explicit_form():
    space = build_supernet(space_config("shufflenet", **TINY["shufflenet"])).space
    explicit = ",".join(["3", "5", "7", "id"] * 5)
    arch = space.parse(explicit)
    assert arch.code == "3570" * 5
    assert space.decode(arch.code) == arch
    assert arch.explicit() == explicit
    assert space.parse(" " + arch.code + " ") == arch


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("3570", "has 20 characters, got 4"),
        ("3570" * 4 + "3579", "position 19 (stage4.block4.kernel): code '9' is not allowed; allowed: id (code 0), 3, 5, 7"),
        (",".join(["3"] * 19), "has 20 decisions, got 19"),
        (",".join(["3"] * 5 + ["4"] + ["3"] * 14), "position 5 (stage2.block2.kernel): '4' is not allowed"),
    ],
)
def test_invalid_shufflenet_architectures_name_the_position(text, fragment):
    space = build_supernet(space_config("shufflenet", **TINY["shufflenet"])).space
    with pytest.raises(ArchitectureError) as err:
        space.parse(text)
    assert fragment in str(err.value)


def test_vit_positions_beyond_the_depth_do_not_apply():
    space = tiny_supernet("vit").space  # depths 2, 3, 4: code = depth + 4 x (heads, mlp ratio)
    arch = space.decode("2" + "64" + "83" + "--" + "--")
    assert arch.values[:5] == (2, 6, 4, 8, 3) and arch.values[5:] == (None,) * 4
    with pytest.raises(ArchitectureError, match="position 5 .*does not apply"):
        space.decode("2" + "64" + "83" + "64" + "--")
    with pytest.raises(ArchitectureError, match="position 7 .*applies to this architecture"):
        space.decode("4" + "64" + "83" + "64" + "--")
    assert space.parse("2,6,4,8,3,-,-,-,-") == arch


def test_sampling_is_uniform_enough_and_valid():
    net = tiny_supernet("shufflenet")
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(4)
    for _ in range(400):
        arch = net.sample(gen)
        net.space.decode(arch.code)  # every sample validates
        counts[net.space.decisions[0].values.index(arch.values[0])] += 1
    assert counts.min() > 60  # each of 4 options ~100 times
    vit = tiny_supernet("vit")
    depths = {vit.sample(gen).values[0] for _ in range(60)}
    assert depths == {2, 3, 4}


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown space 'resnet'; known spaces: shufflenet, unet, vit"):
        space_config("resnet")
    with pytest.raises(ConfigError, match="width_mult"):
        space_config("shufflenet", width_mult=-1)
    with pytest.raises(ConfigError, match="no_such_knob"):
        space_config("unet", no_such_knob=1)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        space_config("vit", input_size=30, patch_size=8)


def test_stride2_identity_is_a_projection_and_stride1_identity_leaves_the_graph():
    net = tiny_supernet("shufflenet").eval()
    arch = net.space.decode("0" * 20)
    subnet = net.extract(arch)
    # only the 4 stride-2 layers survive, as 1x1 projections
    assert list(subnet.features._modules) == ["layer00", "layer04", "layer08", "layer16"]
    assert all(type(m).__name__ == "StridedProjection" for m in subnet.features)
    x = torch.randn(2, 3, 32, 32)
    assert subnet(x).shape == (2, 4)


# -- extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit", "vit-split"])
def test_extracted_model_equals_the_supernet_path(name):
    net = tiny_supernet(name)
    randomize_bn(net)
    net.eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        arch = net.sample(gen)
        subnet = net.extract(arch)
        assert subnet.arch_code == arch.code
        assert not any(type(m).__name__ == "ChoiceLayer" for m in subnet.modules())
        with torch.no_grad():
            diff = (net(x, arch) - subnet(x)).abs().max().item()
        assert diff <= 1e-6, f"{name} {arch.code}: max abs diff {diff}"
        n_sub = sum(p.numel() for p in subnet.parameters())
        assert n_sub < sum(p.numel() for p in net.parameters())


def test_extraction_copies_weights_and_does_not_alias_them():
    net = tiny_supernet("shufflenet").eval()
    arch = net.space.decode("3" * 20)
    subnet = net.extract(arch)
    x = torch.randn(1, 3, 32, 32)
    before = subnet(x).detach().clone()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert torch.equal(subnet(x), before)


def test_vit_weights_are_entangled():
    split = tiny_supernet("vit-split")  # the paper's convention: every head count uses the whole width
    largest = split.extract(split.space.decode("4" + "85" * 4))
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in largest.parameters())
    few = split.extract(split.space.decode("2" + "33" + "33" + "----"))
    assert torch.equal(few.blocks[0].q.weight, split.blocks[0].q.weight) and few.blocks[0].q.bias is None
    assert few.blocks[0].mlp.fc1.out_features == 3 * 48
    net = tiny_supernet("vit")
    # the supernet is the size of its largest subnet, not a stack of per-choice blocks
    largest = net.space.decode("4" + "85" * 4)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.extract(largest).parameters())
    small = net.extract(net.space.decode("2" + "33" + "33" + "----"))
    w = net.blocks[0].q.weight
    assert torch.equal(small.blocks[0].q.weight, w[: 3 * 8])  # 3 heads x head_dim 8: the leading rows


# -- export -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit", "vit-split"])
def test_extracted_model_passes_torch_export_and_onnx(name, tmp_path):
    from pathnas.onnx import export_onnx
    from pathnas.deploy.runners import ort_session

    net = tiny_supernet(name).eval()
    arch = net.sample(torch.Generator().manual_seed(5))
    subnet = net.extract(arch).eval()
    x = torch.randn(1, 3, 32, 32)
    program = torch.export.export(subnet, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), subnet(x), atol=1e-5)

    info = export_onnx(subnet, tmp_path / "model.onnx", (1, 3, 32, 32), metadata={"arch": arch.code})
    session = ort_session(tmp_path / "model.onnx")
    batch = torch.randn(3, 3, 32, 32)  # dynamic batch
    (out,) = session.run(None, {"input": batch.numpy()})
    with torch.no_grad():
        ref = subnet(batch).numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert meta["arch"] == arch.code and info["exporter"] in ("dynamo", "legacy")


# -- latency parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit"])
def test_latency_parts_cover_each_path_with_exact_shapes(name):
    net = tiny_supernet(name).eval()
    parts = net.latency_parts()
    arch = net.sample(torch.Generator().manual_seed(2))
    chosen = net.parts_for(arch, parts)
    fixed = [p for p in parts if not p.requires]
    assert len(fixed) == 2 and all(p in chosen for p in fixed)
    for part in chosen:
        with torch.no_grad():
            part.build().eval()(torch.zeros(part.input_shape))  # the recorded shape is the real input
        assert "@" in part.key and part.key.endswith("x".join(map(str, part.input_shape)))
    if name == "shufflenet":  # stride-1 identities cost nothing: they have no part
        assert len(chosen) == 2 + sum(1 for i, v in enumerate(arch.values) if v != "id" or i in (0, 4, 8, 16))


# -- the paper's reference architectures, counted by hand ---------------------------------------
# Each function counts a path of the reference supernet (the Pathology-NAS code: SPOS's ShuffleNetV2
# one-shot network with SE, its SE-SPOS U-Net, its ViT-Small) from the architecture alone, layer by
# layer, in our FLOPs convention: multiply-adds of convolutions, linear layers and attention; global
# average pooling 1 per input element, bilinear upsampling 4 and LayerNorm 5 per output element (as
# fvcore counts them); BatchNorm not counted (folded). Parameters: every weight, bias and BN affine.

def reference_shufflenet(arch: list, num_classes: int, size: int = 224) -> tuple[int, int]:
    flops = params = 0
    h = size // 2
    flops += 3 * 16 * 9 * h * h  # 3x3 stride-2 stem: 224 -> 112, no max-pool
    params += 3 * 16 * 9 + 2 * 16
    c_in, layer = 16, 0
    for c, repeats in zip((64, 160, 320, 640), (4, 4, 8, 4)):
        for i in range(repeats):
            k = arch[layer]
            layer += 1
            if i == 0:  # stride 2: 56, 28, 14, 7 px
                h_out = h // 2
                if k == "id":  # 1x1 stride-2 conv + BN
                    flops += c_in * c * h_out * h_out
                    params += c_in * c + 2 * c
                else:
                    mid, out = c // 2, c - c_in
                    flops += (c_in * mid * h * h + mid * k * k * h_out * h_out + mid * out * h_out * h_out  # main
                              + c_in * k * k * h_out * h_out + c_in * c_in * h_out * h_out)  # projection branch
                    params += (c_in * mid + mid * k * k + mid * out + c_in * k * k + c_in * c_in
                               + 2 * (mid + mid + out + c_in + c_in))
                    flops += 2 * c * (c // 8)  # SE over the whole output, bias-free
                    params += 2 * c * (c // 8)
                h, c_in = h_out, c
            elif k != "id":  # stride 1: half the channels through the main branch
                half = c // 2
                flops += (2 * half * half + half * k * k) * h * h + 2 * c * (c // 8)
                params += 2 * half * half + half * k * k + 2 * 3 * half + 2 * c * (c // 8)
    flops += 640 * 1024 * h * h + 1024 * h * h + 1024 * num_classes  # head conv, pooling, classifier
    params += 640 * 1024 + 2 * 1024 + 1024 * num_classes  # the classifier has no bias
    return flops, params


def reference_unet(arch: list, num_classes: int, size: int = 224) -> tuple[int, int]:
    f = (32, 64, 128, 256, 512)
    flops = (3 * 32 + 32 * 32) * 9 * size * size  # the stem: two 3x3 conv-BN-ReLU, no SE
    params = (3 * 32 + 32 * 32) * 9 + 2 * 32 + 4 * 32
    slots = [(f[0], f[1], size // 2), (f[1], f[2], size // 4), (f[2], f[3], size // 8), (f[3], f[4], size // 16),
             (f[3] + f[4], f[3], size // 8), (f[2] + f[3], f[2], size // 4), (f[1] + f[2], f[1], size // 2),
             (f[0] + f[1], f[0], size)]
    for k, (c_in, c, h) in zip(arch, slots):
        if k == "id":  # 1x1 conv + BN
            flops += c_in * c * h * h
            params += c_in * c + 2 * c
        else:  # two k x k convs with bias + BN, SE (reduction 8, bias-free)
            flops += (c_in + c) * c * k * k * h * h + 2 * c * (c // 8)
            params += (c_in + c) * c * k * k + 2 * c + 4 * c + 2 * c * (c // 8)
    flops += sum(4 * c * h * h for c, h in ((f[4], size // 8), (f[3], size // 4), (f[2], size // 2), (f[1], size)))
    flops += 32 * num_classes * size * size  # final 1x1 conv
    params += 32 * num_classes + num_classes
    return flops, params


def reference_vit(depth: int, heads: list, ratios: list, num_classes: int, size: int = 224) -> tuple[int, int]:
    d, patch = 384, 16
    n = (size // patch) ** 2 + 1
    flops = 3 * patch * patch * d * (n - 1)  # patch embedding
    params = 3 * patch * patch * d + d + d + n * d  # its conv, the class token, the position embedding
    for h, r in zip(heads[:depth], ratios[:depth]):
        # q, k, v without bias and the projection are 384 wide whatever the head count h
        flops += 4 * n * d * d + 2 * n * n * d + 2 * n * d * r * d + 2 * 5 * n * d
        params += 3 * d * d + d * d + d + (d * r * d + r * d) + (r * d * d + d) + 2 * 2 * d
    flops += 5 * n * d + d * num_classes  # final LayerNorm (fvcore counts every token), head on the class token
    params += 2 * d + d * num_classes + num_classes
    return flops, params


def _measured(space: str, code: str, num_classes: int) -> tuple[int, int]:
    from pathnas.cost import measure_cost

    net = build_supernet(space_config(space, num_classes=num_classes))
    cost = measure_cost(net.extract(code), (1, 3, 224, 224))
    return cost.flops, cost.params


@pytest.mark.parametrize("arch", [["id"] * 20, [3] * 20, [7] * 20, [3, 5, 7, "id"] * 5])
def test_shufflenet_default_is_the_reference_supernet(arch):
    net = build_supernet(space_config("shufflenet", num_classes=2))
    code = net.space.from_values(arch).code
    assert _measured("shufflenet", code, 2) == reference_shufflenet(arch, 2)


def test_shufflenet_default_resolutions_follow_the_reference():
    net = build_supernet(space_config("shufflenet")).eval()
    seen = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-1])) for layer in net.layers]
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224), "3" * 20)
    for h in hooks:
        h.remove()
    assert seen == [56] * 4 + [28] * 4 + [14] * 8 + [7] * 4  # no max-pool: the stem alone halves 224
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net.head.fc.bias is None and net.head.fc.in_features == 1024


@pytest.mark.parametrize("arch", [["id"] * 8, [3] * 8, [3, 5, 7, "id", "id", 7, 5, 3]])
def test_unet_default_is_the_reference_supernet(arch):
    net = build_supernet(space_config("unet", num_classes=2))
    assert _measured("unet", net.space.from_values(arch).code, 2) == reference_unet(arch, 2)


@pytest.mark.parametrize("depth, heads, ratios",
                         [(12, [3] * 12, [4] * 12), (14, [3, 4, 6, 8] * 3 + [8, 8], [5, 3] * 7)])
def test_vit_default_is_the_reference_supernet(depth, heads, ratios):
    net = build_supernet(space_config("vit", num_classes=2))
    values = [depth] + [v for pair in zip(heads, ratios) for v in pair] + [None] * 2 * (14 - depth)
    assert _measured("vit", net.space.from_values(values).code, 2) == reference_vit(depth, heads, ratios, 2)


def test_vit_head_count_changes_neither_flops_nor_params_in_the_paper_convention():
    net = build_supernet(space_config("vit", embed_dim=48, input_size=32, patch_size=8, depth_choices=(2,)))
    assert net.config.head_width(3) == 16 and net.config.head_width(8) == 6
    from pathnas.cost import measure_cost

    few, many = (measure_cost(net.extract(code), (1, 3, 32, 32)) for code in ("2" + "34" * 2, "2" + "84" * 2))
    assert (few.flops, few.params) == (many.flops, many.params)
    autoformer = build_supernet(space_config("vit", embed_dim=48, head_dim=8, input_size=32, patch_size=8,
                                             depth_choices=(2,)))
    few, many = (measure_cost(autoformer.extract(code), (1, 3, 32, 32)) for code in ("2" + "34" * 2, "2" + "84" * 2))
    assert few.params < many.params
