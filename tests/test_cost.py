"""FLOPs (fvcore, one multiply-add = one flop) and parameter counts."""
from __future__ import annotations

import torch
from torch import nn

from pathnas.cost import FLOPS_CONVENTION, measure_cost
from pathnas.spaces import build_supernet, space_config
from pathnas.spaces.vit import ViTBlock


def test_conv_flops_follow_the_multiply_add_convention():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
    cost = measure_cost(model, (1, 3, 16, 16))
    assert cost.flops == 8 * 3 * 3 * 3 * 16 * 16  # MACs; the ReLU is not counted
    assert cost.params == 8 * 3 * 3 * 3
    assert cost.flops_convention == FLOPS_CONVENTION and "multiply-add" in FLOPS_CONVENTION


def test_batchnorm_is_folded_and_not_counted():
    model = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)).eval()
    assert measure_cost(model, (1, 3, 4, 4)).flops == 8 * 3 * 4 * 4
    assert "BatchNorm" in FLOPS_CONVENTION


def test_attention_is_counted():
    dim, heads, head_dim, hidden, tokens = 16, 2, 8, 32, 5
    cost = measure_cost(nn.Sequential(ViTBlock(dim, heads, head_dim, hidden)), (1, tokens, dim))
    width = heads * head_dim
    linear = tokens * (3 * dim * width + width * dim + dim * hidden + hidden * dim)
    attention = 2 * heads * tokens * tokens * head_dim  # q @ k^T and attn @ v
    layer_norms = 2 * tokens * dim * 5  # fvcore counts 5 flops per normalised element
    assert cost.flops == linear + attention + layer_norms


def test_per_layer_table_adds_up():
    net = build_supernet(space_config("shufflenet", width_mult=0.25, input_size=32))
    subnet = net.extract(net.space.decode("35703570357035703570"))
    cost = measure_cost(subnet, (1, 3, 32, 32))
    assert cost.params == sum(p.numel() for p in subnet.parameters())
    assert sum(row.flops for row in cost.layers) == cost.flops
    assert sum(row.params for row in cost.layers) == cost.params
    names = [row.name for row in cost.layers]
    assert names[0] == "stem.0" and names[-1] == "head" and "features.layer18" in names and "features.layer19" not in names
    assert "features.layer03" not in names  # an identity leaves the graph and the table
    assert cost.layers[-1].output_shape == [1, 4]
    assert subnet.training  # measuring does not change the model's mode


def test_bigger_kernels_cost_more():
    net = build_supernet(space_config("unet", width_mult=0.25, input_size=32))
    costs = [measure_cost(net.extract(net.space.decode(k * 8)), (1, 3, 32, 32)).flops for k in "0357"]
    assert costs == sorted(costs) and len(set(costs)) == 4
