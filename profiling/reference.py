"""The latency reference model: a small fixed ONNX network timed beside what is judged.

`regress` times it in alternation with the bundle's model, in the baseline and in every
check, and judges the model relative to it (deploy/regress.py): a machine that is uniformly
slower or faster than when the baseline was taken then does not read as a regression. A latency
table times it in the same rounds and processes as its parts and probes (its anchor), so a later
`profile check` or a search's start-up probe can tell a machine that moved from a table that is wrong.

The more it runs like the models it is compared with, the better it cancels the machine: so it
is built from the searched models' own parts (ShuffleNet / MobileNet-style units: 1x1 conv,
3x3 depthwise, 1x1 conv, squeeze-and-excitation, residual add, channel shuffle), three stages
on a 3 x 64 x 64 input with a dynamic batch. Made with the ONNX library's helpers from a fixed
seed and fixed opset / IR version, so the same onnx version writes the same bytes (baselines
record its SHA-256 and refuse a different one). The toolchain builds it; the runtime only runs it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pathnas.io import write_bytes_atomic

INPUT_SIZE = 64
STAGES = ((32, 2), (64, 3), (128, 2))  # (width, units); the first unit of stages 2 and 3 has stride 2
OPSET, IR_VERSION = 17, 8  # fixed, so the file does not change with the onnx version's defaults


def reference_model_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []

    def tensor(array: np.ndarray, name: str) -> str:
        weights.append(numpy_helper.from_array(array, name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(x: str, name: str, c_in: int, c_out: int, k: int = 1, stride: int = 1, group: int = 1,
             act: str | None = "Relu") -> str:
        fan_in = c_in // group * k * k
        w = tensor((rng.standard_normal((c_out, c_in // group, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                   f"{name}.weight")
        b = tensor(np.zeros(c_out, np.float32), f"{name}.bias")
        out = node("Conv", [x, w, b], name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
                   group=group)
        return node(act, [out], f"{name}.{act.lower()}") if act else out

    def unit(x: str, name: str, c_in: int, c_out: int, stride: int, side: int) -> tuple[str, int]:
        h = conv(x, f"{name}.pw1", c_in, c_out)
        h = conv(h, f"{name}.dw", c_out, c_out, 3, stride, group=c_out, act=None)
        h = conv(h, f"{name}.pw2", c_out, c_out, act=None)
        squeezed = node("GlobalAveragePool", [h], f"{name}.se.pool")
        gate = conv(conv(squeezed, f"{name}.se.fc1", c_out, c_out // 8), f"{name}.se.fc2", c_out // 8, c_out,
                    act="Sigmoid")
        h = node("Mul", [h, gate], f"{name}.se")
        if stride == 1 and c_in == c_out:
            h = node("Add", [x, h], f"{name}.add")
        side //= stride
        split = tensor(np.array([0, 2, c_out // 2, side, side], np.int64), f"{name}.shuffle.split")
        merged = tensor(np.array([0, c_out, side, side], np.int64), f"{name}.shuffle.merge")
        h = node("Reshape", [h, split], f"{name}.shuffle.r1")
        h = node("Transpose", [h], f"{name}.shuffle.t", perm=[0, 2, 1, 3, 4])
        return node("Reshape", [h, merged], f"{name}.shuffle"), side

    x, c, side = conv("input", "stem", 3, STAGES[0][0], 3, 2), STAGES[0][0], INPUT_SIZE // 2
    for s, (width, units) in enumerate(STAGES):
        for u in range(units):
            x, side = unit(x, f"stage{s}.unit{u}", c, width, 2 if u == 0 and s > 0 else 1, side)
            c = width
    x = node("Flatten", [node("GlobalAveragePool", [x], "pool")], "features")
    fc_w = tensor((rng.standard_normal((8, c)) * 0.1).astype(np.float32), "fc.weight")
    node("Gemm", [x, fc_w, tensor(np.zeros(8, np.float32), "fc.bias")], "logits", transB=1)
    graph = helper.make_graph(
        nodes, "pathnas-latency-reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])], weights)
    model = helper.make_model(graph, producer_name="pathnas-edge", producer_version="reference/1",
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def write_reference_model(path: Path) -> Path:
    write_bytes_atomic(path, reference_model_bytes())
    return Path(path)
