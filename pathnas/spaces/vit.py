"""ViT space with weight entanglement (the Pathology-NAS transformer space).

Decisions: the depth (12, 13 or 14 blocks), then for every block its number of
attention heads (3, 4, 6, 8) and its MLP ratio (3, 4, 5). Blocks beyond the depth do
not apply and take '-' in the code.

The reference (Pathology-NAS's ViT, built on ViT-Small): embedding 384, patch 16, a class
token and learned position embedding, pre-norm blocks with bias-free q, k, v, a final
LayerNorm and a linear head on the class token. Its attention is always 384 wide: h heads
split it into heads of 384/h (128, 96, 64, 48), so the number of heads changes neither
parameters nor FLOPs. That is the default here (``head_dim=None``); ``head_dim=64``
instead gives AutoFormer's convention (every head 64 wide, attention width h * 64).

Weight entanglement (AutoFormer; the reference keeps separate weights per choice, which
changes no subnet): the supernet holds only the largest block; a smaller choice uses the
leading slice of each weight: the first h * head_dim rows of q, k and v and input columns
of the output projection (all of them with the paper's convention), the first ratio * 384
hidden units of the MLP. The supernet is thus the size of its largest subnet, and every
subnet shares its weights.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.layers import Mlp, PatchEmbed, make_divisible, trunc_normal_
from torch import nn

from .base import Architecture, Decision, Option, SearchSpace
from .supernet import LatencyPart, PathModel, SpaceConfig, Supernet, base36, shape_key


class ViTConfig(SpaceConfig):
    space: Literal["vit"] = "vit"
    embed_dim: int = Field(384, ge=8)
    patch_size: int = Field(16, ge=2)
    head_dim: int | None = Field(None, ge=4, description="width of one attention head, the same for every head "
                                 "count (AutoFormer); None: the heads split the embedding width (the paper's)")
    qkv_bias: bool = Field(False, description="biases on q, k and v (the reference has none)")
    depth_choices: tuple[int, ...] = (12, 13, 14)
    head_choices: tuple[int, ...] = (3, 4, 6, 8)
    mlp_ratio_choices: tuple[int, ...] = (3, 4, 5)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self):
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be a multiple of patch_size {self.patch_size}")
        for name in ("depth_choices", "head_choices", "mlp_ratio_choices"):
            values = getattr(self, name)
            if not values or sorted(set(values)) != list(values) or not all(0 < v < 36 for v in values):
                raise ValueError(f"{name} must be distinct increasing integers in 1..35, got {values}")
        return self

    @property
    def dim(self) -> int:
        """The embedding width: a multiple of 8, and of every head count when the heads split it."""
        step = 8 if self.head_dim is not None else math.lcm(8, *self.head_choices)
        return make_divisible(self.embed_dim * self.width_mult, step)

    def head_width(self, heads: int) -> int:
        """The width of one head in a block with ``heads`` heads."""
        if self.head_dim is None:
            return self.dim // heads
        return max(4, int(round(self.head_dim * self.width_mult)))

    @property
    def heads_note(self) -> str:
        """How the head count sets the attention width, in words (prompts, docs)."""
        if self.head_dim is None:
            return (f"the heads split the {self.dim}-wide attention, so the head count changes neither FLOPs "
                    f"nor parameters")
        width = self.head_width(1)
        return f"each head {width} wide, so a block with h heads has an attention width of h x {width}"

    @property
    def max_depth(self) -> int:
        return max(self.depth_choices)


def vit_space(config: ViTConfig) -> SearchSpace:
    def decision(name: str, values: tuple[int, ...]) -> Decision:
        return Decision(name, tuple(Option(v, base36(v)) for v in values))

    decisions = [decision("depth", config.depth_choices)]
    for i in range(config.max_depth):
        decisions.append(decision(f"block{i + 1}.heads", config.head_choices))
        decisions.append(decision(f"block{i + 1}.mlp_ratio", config.mlp_ratio_choices))

    def active(values):
        depth = values[0]
        return [True] + [depth is not None and i // 2 < depth for i in range(2 * config.max_depth)]

    per_block = len(config.head_choices) * len(config.mlp_ratio_choices)
    size = sum(per_block**d for d in config.depth_choices)
    return SearchSpace("vit", decisions, active_rule=active, size=size)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, width = q.shape
    q, k, v = (t.view(b, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width)


class ViTBlock(nn.Module):
    """A plain pre-norm transformer block with its own widths (standalone models)."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        width = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, width, bias=qkv_bias) for _ in range(3))
        self.proj = nn.Linear(width, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, drop=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.proj(multi_head_attention(self.q(h), self.k(h), self.v(h), self.heads))
        return x + self.mlp(self.norm2(x))


def _rows(linear: nn.Linear, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    return linear.weight[:n], None if linear.bias is None else linear.bias[:n]


class EntangledBlock(ViTBlock):
    """The largest block; ``forward(x, heads, hidden)`` runs the leading slices of its weights.

    ``fixed_head_dim`` None: every head count splits the full attention width (the paper's).
    """

    def __init__(self, dim: int, max_heads: int, fixed_head_dim: int | None, hidden: int, dropout: float = 0.0,
                 qkv_bias: bool = False):
        super().__init__(dim, max_heads, fixed_head_dim or dim // max_heads, hidden, dropout, qkv_bias)
        self.fixed_head_dim = fixed_head_dim

    def width(self, heads: int) -> int:
        return heads * self.fixed_head_dim if self.fixed_head_dim else self.q.out_features

    def forward(self, x: torch.Tensor, heads: int, hidden: int) -> torch.Tensor:  # type: ignore[override]
        width = self.width(heads)
        h = self.norm1(x)
        q, k, v = (F.linear(h, *_rows(lin, width)) for lin in (self.q, self.k, self.v))
        # Column slices are made contiguous so the GEMM matches the extracted model's bit for bit.
        attn = multi_head_attention(q, k, v, heads)
        x = x + F.linear(attn, self.proj.weight[:, :width].contiguous(), self.proj.bias)
        h = self.mlp.act(F.linear(self.norm2(x), *_rows(self.mlp.fc1, hidden)))
        h = self.mlp.drop1(h)
        return x + self.mlp.drop2(F.linear(h, self.mlp.fc2.weight[:, :hidden].contiguous(), self.mlp.fc2.bias))

    def extract(self, heads: int, hidden: int) -> ViTBlock:
        width = self.width(heads)
        block = ViTBlock(self.norm1.normalized_shape[0], heads, width // heads, hidden,
                         qkv_bias=self.q.bias is not None).to(self.q.weight.device, self.q.weight.dtype)
        with torch.no_grad():
            for src, dst in ((self.q, block.q), (self.k, block.k), (self.v, block.v)):
                dst.weight.copy_(src.weight[:width])
                if src.bias is not None:
                    dst.bias.copy_(src.bias[:width])
            block.proj.weight.copy_(self.proj.weight[:, :width])
            block.proj.bias.copy_(self.proj.bias)
            block.mlp.fc1.weight.copy_(self.mlp.fc1.weight[:hidden])
            block.mlp.fc1.bias.copy_(self.mlp.fc1.bias[:hidden])
            block.mlp.fc2.weight.copy_(self.mlp.fc2.weight[:, :hidden])
            block.mlp.fc2.bias.copy_(self.mlp.fc2.bias)
            block.norm1.load_state_dict(self.norm1.state_dict())
            block.norm2.load_state_dict(self.norm2.state_dict())
        return block


class ViTEmbedding(nn.Module):
    """Patch embedding, class token and learned position embedding."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(config.input_size, config.patch_size, config.in_chans, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, config.dim))
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed


class ViTHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x)[:, 0]))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ViTSupernet(Supernet):
    task = "classify"

    def __init__(self, config: ViTConfig | None = None):
        config = config or ViTConfig()
        super().__init__(config, vit_space(config))
        self.embed = ViTEmbedding(config)
        max_hidden = config.dim * max(config.mlp_ratio_choices)
        self.blocks = nn.ModuleList(
            EntangledBlock(config.dim, max(config.head_choices), config.head_dim and config.head_width(1), max_hidden,
                           config.dropout, config.qkv_bias)
            for _ in range(config.max_depth)
        )
        self.head = ViTHead(config.dim, config.num_classes, config.dropout)
        self.apply(_init_linear)

    def _layers(self, arch: Architecture):
        depth = arch.values[0]
        for i in range(depth):
            heads, ratio = arch.values[1 + 2 * i], arch.values[2 + 2 * i]
            yield self.blocks[i], heads, self.config.dim * ratio

    def forward(self, x: torch.Tensor, arch: Architecture | str) -> torch.Tensor:
        arch = self.check(arch)
        x = self.embed(x)
        for block, heads, hidden in self._layers(arch):
            x = block(x, heads, hidden)
        return self.head(x)

    def extract(self, arch: Architecture | str) -> PathModel:
        arch = self.check(arch)
        blocks = nn.Sequential(*(block.extract(heads, hidden) for block, heads, hidden in self._layers(arch)))
        subnet = PathModel(arch.code, embed=copy.deepcopy(self.embed), blocks=blocks, head=copy.deepcopy(self.head))
        return subnet.train(self.training)

    def latency_parts(self) -> list[LatencyPart]:
        c = self.config
        tokens = self.embed.patch_embed.num_patches + 1
        token_shape = (1, tokens, c.dim)
        image_shape = tuple(self.example_input().shape)
        parts = [
            LatencyPart(shape_key(f"vit.embed(patch={c.patch_size},dim={c.dim})", image_shape), image_shape,
                        lambda: self.embed),
            LatencyPart(shape_key(f"vit.head(classes={c.num_classes})", token_shape), token_shape, lambda: self.head),
        ]
        for i, block in enumerate(self.blocks):
            for heads in c.head_choices:
                for ratio in c.mlp_ratio_choices:
                    # Built on demand: 14 blocks x 12 choices of standalone blocks would not fit in memory at once.
                    name = f"vit.block(heads={heads},head_dim={c.head_width(heads)},hidden={c.dim * ratio})"
                    parts.append(LatencyPart(
                        shape_key(name, token_shape), token_shape,
                        lambda b=block, h=heads, r=ratio: b.extract(h, c.dim * r),
                        ((1 + 2 * i, heads), (2 + 2 * i, ratio)),
                    ))
        return parts
