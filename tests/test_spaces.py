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

# CPU-sized configurations of the three spaces (same code paths as the defaults).
TINY = {
    "shufflenet": dict(width_mult=0.25, input_size=32),
    "unet": dict(width_mult=0.25, input_size=32),
    "vit": dict(embed_dim=32, head_dim=8, input_size=32, patch_size=8, depth_choices=(2, 3, 4)),
}


def tiny_supernet(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_supernet(space_config(name, **TINY[name]))


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

@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit"])
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
    net = tiny_supernet("vit")
    # the supernet is the size of its largest subnet, not a stack of per-choice blocks
    largest = net.space.decode("4" + "85" * 4)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.extract(largest).parameters())
    small = net.extract(net.space.decode("2" + "33" + "33" + "----"))
    w = net.blocks[0].q.weight
    assert torch.equal(small.blocks[0].q.weight, w[: 3 * 8])  # 3 heads x head_dim 8: the leading rows


# -- export -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["shufflenet", "unet", "vit"])
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
