"""U-Net segmentation space (the Pathology-NAS segmentation space).

The reference (Pathology-NAS's SE-SPOS U-Net): five levels with filters 32, 64, 128, 256,
512; a fixed stem of two 3x3 conv-BN-ReLU layers; then four encoder blocks (each after a
2x max-pool) and four decoder blocks (each on the skip connection concatenated with the
bilinearly upsampled deeper features), and a 1x1 conv to the classes. The 8 encoder and
decoder blocks are the choice blocks, each one of {identity, 3x3, 5x5, 7x7}: a k x k VGG
double conv with squeeze-excitation (reduction 8) before its last ReLU. Every block changes
its channel count, so 'id' is a 1x1 conv with BN (no ReLU, as in the reference).
The convolutions of the VGG blocks keep the reference's biases, so that parameter counts
are the reference's exactly.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from timm.layers import ConvNormAct, SEModule, make_divisible
from torch import nn

from ..errors import ConfigError
from .base import Architecture, SearchSpace
from .supernet import ChoiceLayer, LatencyPart, SpaceConfig, Supernet, kernel_decision, record_input_shapes, shape_key

KERNELS = (3, 5, 7)
ENCODER_NAMES = ("enc1", "enc2", "enc3", "enc4")
DECODER_NAMES = ("dec3", "dec2", "dec1", "dec0")


class UNetConfig(SpaceConfig):
    space: Literal["unet"] = "unet"
    num_classes: int = Field(2, ge=2, description="segmentation classes including background")
    filters: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)
    se_reduction: int = Field(8, ge=1)

    def channels(self, c: int) -> int:
        return make_divisible(c * self.width_mult, 8)


def unet_space(config: UNetConfig) -> SearchSpace:
    names = [f"{n}.kernel" for n in ENCODER_NAMES + DECODER_NAMES]
    return SearchSpace("unet", [kernel_decision(n, KERNELS) for n in names])


class VGGBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, squeeze-excitation (when ``se_reduction``), ReLU; k x k kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, se_reduction: int | None):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, kernel, bias=True)
        self.conv2 = ConvNormAct(out_ch, out_ch, kernel, bias=True, apply_act=False)
        # Bias-free squeeze of width out/reduction, like the reference's SELayer.
        self.se = SEModule(out_ch, rd_channels=out_ch // se_reduction, bias=False) if se_reduction else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.conv2(self.conv1(x))))


def _candidates(in_ch: int, out_ch: int, se_reduction: int) -> list[nn.Module]:
    identity = ConvNormAct(in_ch, out_ch, 1, apply_act=False)  # 1x1 conv + BN: the reference's 'id'
    return [identity] + [VGGBlock(in_ch, out_ch, k, se_reduction) for k in KERNELS]


class UNetTopology(nn.Module):
    """The fixed U-Net wiring; ``block(name, x)`` runs whichever block fills a slot."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

    def run(self, x: torch.Tensor, block) -> torch.Tensor:
        x0 = block("enc0", x)
        x1 = block("enc1", self.pool(x0))
        x2 = block("enc2", self.pool(x1))
        x3 = block("enc3", self.pool(x2))
        x4 = block("enc4", self.pool(x3))
        d3 = block("dec3", torch.cat([x3, self.up(x4)], dim=1))
        d2 = block("dec2", torch.cat([x2, self.up(d3)], dim=1))
        d1 = block("dec1", torch.cat([x1, self.up(d2)], dim=1))
        d0 = block("dec0", torch.cat([x0, self.up(d1)], dim=1))
        return block("final", d0)


def _slot_channels(config: UNetConfig) -> dict[str, tuple[int, int]]:
    f = [config.channels(c) for c in config.filters]
    return {
        "enc1": (f[0], f[1]),
        "enc2": (f[1], f[2]),
        "enc3": (f[2], f[3]),
        "enc4": (f[3], f[4]),
        "dec3": (f[3] + f[4], f[3]),
        "dec2": (f[2] + f[3], f[2]),
        "dec1": (f[1] + f[2], f[1]),
        "dec0": (f[0] + f[1], f[0]),
    }


class UNetSubnet(nn.Module):
    """A standalone U-Net path: one plain block per slot."""

    def __init__(self, blocks: nn.ModuleDict, topology: UNetTopology, arch_code: str):
        super().__init__()
        self.blocks = blocks
        self.topology = topology
        self.arch_code = arch_code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.topology.run(x, lambda name, t: self.blocks[name](t))


class UNetSupernet(Supernet):
    task = "segment"

    def __init__(self, config: UNetConfig | None = None):
        config = config or UNetConfig()
        if config.input_size % 16:
            raise ConfigError(f"unet: input_size {config.input_size} must be a multiple of 16 (four 2x poolings)")
        super().__init__(config, unet_space(config))
        f0 = config.channels(config.filters[0])
        self.enc0 = VGGBlock(config.in_chans, f0, 3, se_reduction=None)  # the fixed stem has no SE
        self.choices = nn.ModuleDict(
            {name: ChoiceLayer(_candidates(i, o, config.se_reduction)) for name, (i, o) in _slot_channels(config).items()}
        )
        self.final = nn.Conv2d(f0, config.num_classes, 1)
        self.topology = UNetTopology()
        self._slots = ENCODER_NAMES + DECODER_NAMES

    def _chosen(self, arch: Architecture) -> dict[str, nn.Module]:
        chosen: dict[str, nn.Module] = {"enc0": self.enc0}
        for pos, (name, value) in enumerate(zip(self._slots, arch.values)):
            chosen[name] = self.choices[name].candidates[self.option_index(pos, value)]
        chosen["final"] = self.final
        return chosen

    def forward(self, x: torch.Tensor, arch: Architecture | str) -> torch.Tensor:
        chosen = self._chosen(self.check(arch))
        return self.topology.run(x, lambda name, t: chosen[name](t))

    def extract(self, arch: Architecture | str) -> UNetSubnet:
        arch = self.check(arch)
        blocks = nn.ModuleDict({name: copy.deepcopy(m) for name, m in self._chosen(arch).items()})
        return UNetSubnet(blocks, copy.deepcopy(self.topology), arch.code).train(self.training)

    def latency_parts(self) -> list[LatencyPart]:
        any_path = self.space.decode("3" * len(self.space))  # every choice of a slot sees the same input shape
        named = {"enc0": self.enc0, "final": self.final, **self._chosen(any_path)}
        shapes = record_input_shapes(self, named, lambda: self(self.example_input(), any_path))
        c = self.config
        parts = [
            LatencyPart(shape_key("unet.enc0", shapes["enc0"]), shapes["enc0"], lambda: self.enc0),
            LatencyPart(shape_key(f"unet.final(classes={c.num_classes})", shapes["final"]), shapes["final"],
                        lambda: self.final),
        ]
        for pos, name in enumerate(self._slots):
            shape = shapes[name]
            out_ch = _slot_channels(c)[name][1]
            for value, module in zip(self.space.decisions[pos].values, self.choices[name].candidates):
                kind = "unet.proj1x1" if value == "id" else f"unet.vgg(k={value})"
                parts.append(LatencyPart(shape_key(f"{kind}(out={out_ch})", shape), shape, lambda m=module: m,
                                         ((pos, value),)))
        return parts
