"""FLOPs and parameter counts through fvcore, with a per-layer table.

Convention (said wherever FLOPs are printed): fvcore counts one fused multiply-add
as one flop, so its figures are MACs; element-wise ops (activations, additions,
softmax outside attention) are not counted, and neither is BatchNorm, which folds into
the preceding convolution for inference (the reference counts of SPOS and Pathology-NAS
leave it out too). Attention is counted by the handle below because fvcore has none for
``scaled_dot_product_attention``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore touches torch.jit.script at import, which warns it is deprecated
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count
    from fvcore.nn.jit_handles import get_shape

FLOPS_CONVENTION = "fvcore: 1 multiply-add = 1 flop (MACs); element-wise ops and BatchNorm (folded) not counted"


def _sdpa_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """q @ k^T and attn @ v: 2 * batch * heads * n_q * n_k * head_dim multiply-adds."""
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n_q, dim = q
    n_k = k[-2]
    return int(2 * torch.tensor(batch).prod().item() * n_q * n_k * dim)


def _folded(_inputs: list[Any], _outputs: list[Any]) -> int:
    return 0


@dataclass
class LayerCost:
    name: str
    kind: str
    output_shape: list[int]
    params: int
    flops: int


@dataclass
class ModelCost:
    params: int
    flops: int
    input_shape: list[int]
    layers: list[LayerCost]
    flops_convention: str = FLOPS_CONVENTION

    def as_dict(self) -> dict:
        return asdict(self)


def _table_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level parts, with containers (Sequential/ModuleDict) opened one level."""
    rows = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleDict, nn.ModuleList)) and len(child) > 0:
            rows += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            rows.append((name, child))
    return rows


@torch.no_grad()
def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    """FLOPs (fvcore) and params of a standalone model at batch 1, with a per-layer table."""
    was_training = model.training
    model.eval()
    example = torch.zeros(*input_shape)
    rows = _table_modules(model)
    shapes: dict[str, list[int]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, [int(d) for d in out.shape]))
        for name, m in rows
    ]
    try:
        analysis = FlopCountAnalysis(model, example)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_handle)
        # Folded into the conv before it at inference. (A None handle would only add it to fvcore's
        # ignored ops while its default handle keeps counting.)
        analysis.set_op_handle("aten::batch_norm", _folded)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants are expected and harmless
            total = int(analysis.total())
            by_module = analysis.by_module()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = parameter_count(model)
    layers = [
        LayerCost(name, type(m).__name__, shapes.get(name, []), int(params.get(name, 0)), int(by_module.get(name, 0)))
        for name, m in rows
    ]
    return ModelCost(int(params[""]), total, list(input_shape), layers)
