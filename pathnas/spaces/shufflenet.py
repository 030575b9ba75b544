"""ShuffleNetV2 single-path space (the Pathology-NAS / SPOS classification space).

The reference supernet (SPOS's ShuffleNetV2 one-shot network as Pathology-NAS uses it): a
3x3 stride-2 stem conv (224 -> 112 px, no max-pool), four stages of 4, 4, 8 and 4 choice
layers, each stage opening with a stride-2 layer (56, 28, 14, 7 px), a 1x1 head conv to 1024
channels, global average pooling and a bias-free linear classifier.

Each choice layer is one of {identity, 3x3, 5x5, 7x7}: the depthwise kernel of a ShuffleNetV2
unit whose output goes through squeeze-excitation (reduction 8, bias-free, on the whole
output as in the Pathology-NAS code). SPOS itself has no identity choice; Pathology-NAS puts
one in place of SPOS's Xception block. The first layer of every stage has stride 2 and
changes the channel count, so it cannot be a true identity: there 'id' is a 1x1 stride-2
conv with BN (the reference's choice). Elsewhere 'id' is a true identity and the extracted
model drops the layer.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field, field_validator
from timm.layers import ConvNormAct, SEModule, make_divisible
from torch import nn

from .base import Architecture, SearchSpace
from .supernet import (ChoiceLayer, LatencyPart, PathModel, SpaceConfig, Supernet, kernel_decision, record_input_shapes,
                       shape_key)

KERNELS = (3, 5, 7)


class ShuffleNetConfig(SpaceConfig):
    space: Literal["shufflenet"] = "shufflenet"
    stage_repeats: tuple[int, ...] = (4, 4, 8, 4)
    stage_channels: tuple[int, ...] = (64, 160, 320, 640)
    stem_channels: int = Field(16, ge=4)
    head_channels: int = Field(1024, ge=8)
    se_reduction: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the classifier (the reference has none)")

    @field_validator("stage_channels")
    @classmethod
    def _same_length(cls, v, info):
        repeats = info.data.get("stage_repeats")
        if repeats is not None and len(v) != len(repeats):
            raise ValueError(f"stage_channels has {len(v)} entries but stage_repeats has {len(repeats)}")
        return v

    def channels(self, c: int) -> int:
        # Even and a multiple of 8: the unit splits channels in half and SE rounds to 8.
        return make_divisible(c * self.width_mult, 8)


def shufflenet_space(config: ShuffleNetConfig) -> SearchSpace:
    decisions = []
    for stage, repeats in enumerate(config.stage_repeats):
        for i in range(repeats):
            decisions.append(kernel_decision(f"stage{stage + 1}.block{i + 1}.kernel", KERNELS))
    return SearchSpace("shufflenet", decisions)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with a k x k depthwise conv, then SE over the whole output.

    Stride 1: half the channels pass through, the other half go through the main branch.
    Stride 2: a depthwise projection branch runs beside the main branch; both are concatenated.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, se_reduction: int):
        super().__init__()
        self.stride = stride
        self.out_channels = out_ch
        main_in = in_ch if stride == 2 else in_ch // 2
        main_out = out_ch - in_ch if stride == 2 else out_ch // 2
        mid = out_ch // 2
        self.main = nn.Sequential(
            ConvNormAct(main_in, mid, 1),
            ConvNormAct(mid, mid, kernel, stride=stride, groups=mid, apply_act=False),
            ConvNormAct(mid, main_out, 1),
        )
        self.proj = (
            nn.Sequential(
                ConvNormAct(in_ch, in_ch, kernel, stride=2, groups=in_ch, apply_act=False),
                ConvNormAct(in_ch, in_ch, 1),
            )
            if stride == 2
            else None
        )
        # On the concatenated output, as in the Pathology-NAS reference (its published parameter
        # counts need it: see the README); squeeze width out/reduction, no biases, like its SELayer.
        self.se = SEModule(out_ch, rd_channels=out_ch // se_reduction, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            passthrough, x = x.chunk(2, dim=1)
            return channel_shuffle(self.se(torch.cat([passthrough, self.main(x)], dim=1)))
        return channel_shuffle(self.se(torch.cat([self.proj(x), self.main(x)], dim=1)))


class StridedProjection(nn.Sequential):
    """The 'identity' choice of a stride-2 layer: 1x1 stride-2 conv + BN."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False), nn.BatchNorm2d(out_ch))


def _stem(config: ShuffleNetConfig) -> nn.Sequential:
    """3x3 stride-2 conv, BN, ReLU: 224 -> 112 px. No max-pool (SPOS has none)."""
    return nn.Sequential(ConvNormAct(config.in_chans, config.channels(config.stem_channels), 3, stride=2))


class ClassifierHead(nn.Module):
    """1x1 conv to the head width, global average pooling, a bias-free linear classifier (SPOS's)."""

    def __init__(self, in_ch: int, head_ch: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv = ConvNormAct(in_ch, head_ch, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head_ch, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.conv(x)).flatten(1)))


class ShuffleNetSupernet(Supernet):
    task = "classify"

    def __init__(self, config: ShuffleNetConfig | None = None):
        config = config or ShuffleNetConfig()
        super().__init__(config, shufflenet_space(config))
        self.stem = _stem(config)
        in_ch = config.channels(config.stem_channels)
        layers = []
        for repeats, channels in zip(config.stage_repeats, config.stage_channels):
            out_ch = config.channels(channels)
            for i in range(repeats):
                stride = 2 if i == 0 else 1
                identity = StridedProjection(in_ch, out_ch) if stride == 2 else nn.Identity()
                units = [ShuffleUnit(in_ch, out_ch, k, stride, config.se_reduction) for k in KERNELS]
                layers.append(ChoiceLayer([identity, *units]))
                in_ch = out_ch
        self.layers = nn.ModuleList(layers)
        self.head = ClassifierHead(in_ch, config.channels(config.head_channels), config.num_classes, config.dropout)

    def forward(self, x: torch.Tensor, arch: Architecture | str) -> torch.Tensor:
        arch = self.check(arch)
        x = self.stem(x)
        for pos, (layer, value) in enumerate(zip(self.layers, arch.values)):
            x = layer(x, self.option_index(pos, value))
        return self.head(x)

    def extract(self, arch: Architecture | str) -> PathModel:
        arch = self.check(arch)
        blocks = OrderedDict()
        for pos, (layer, value) in enumerate(zip(self.layers, arch.values)):
            chosen = layer.candidates[self.option_index(pos, value)]
            if not isinstance(chosen, nn.Identity):  # true identities leave the graph
                blocks[f"layer{pos:02d}"] = copy.deepcopy(chosen)
        subnet = PathModel(arch.code, stem=copy.deepcopy(self.stem), features=nn.Sequential(blocks),
                           head=copy.deepcopy(self.head))
        return subnet.train(self.training)

    def latency_parts(self) -> list[LatencyPart]:
        named = {"stem": self.stem, "head": self.head, **{f"layer{i:02d}": layer for i, layer in enumerate(self.layers)}}
        any_path = self.space.decode("3" * len(self.space))  # every choice of a layer sees the same input shape
        shapes = record_input_shapes(self, named, lambda: self(self.example_input(), any_path))
        parts = [
            LatencyPart(shape_key("shufflenet.stem", shapes["stem"]), shapes["stem"], lambda: self.stem),
            LatencyPart(shape_key(f"shufflenet.head(classes={self.config.num_classes})", shapes["head"]),
                        shapes["head"], lambda: self.head),
        ]
        for pos, layer in enumerate(self.layers):
            shape = shapes[f"layer{pos:02d}"]
            for value, module in zip(self.space.decisions[pos].values, layer.candidates):
                if isinstance(module, nn.Identity):
                    continue  # a true identity costs nothing and leaves the graph
                out_ch = module[0].out_channels if isinstance(module, StridedProjection) else None
                if isinstance(module, StridedProjection):
                    name = f"shufflenet.proj1x1(out={out_ch},s=2)"
                else:
                    name = f"shufflenet.unit(out={module.out_channels},k={value},s={module.stride})"
                parts.append(LatencyPart(shape_key(name, shape), shape, lambda m=module: m, ((pos, value),)))
        return parts
