"""Timing PyTorch modules on a profile's torch device (``torch-cuda``), on this machine.

File runtimes (ONNX Runtime, OpenVINO, TensorRT) never time anything in the toolchain's process:
``measure.time_items`` exports to ONNX and the device half's code times the files
(``pathnas.deploy.device_profile``), the same code that runs on a device without the toolchain.
``torch-cuda`` times the PyTorch module itself (``TorchItem``), through the same protocol,
``pathnas.deploy.timing.time_in_rounds``.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

from pathnas.deploy.timing import TimingProtocol, time_in_rounds
from pathnas.errors import ConfigError

from .profiles import HardwareProfile

log = logging.getLogger("pathnas.profiling")

# Where each runtime that times PyTorch modules runs them (tests run the same code on "cpu").
TORCH_DEVICES = {"torch-cuda": "cuda"}
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16"}


class TorchItem:
    """A PyTorch module on a torch device, in the profile's precision.

    On CUDA the module's forward pass is captured once as a CUDA graph and the graph's replay is
    timed, with ``torch.cuda.synchronize`` before every clock read and the same warm-up by count
    and time as every other runtime. Eager calls at batch 1 time the host instead of the GPU:
    benchmarks/torch_cuda_timing.py on an H100 (default ShuffleNet, 224 px, FP16) measured eager
    round medians of 8.9 to 12.3 ms, each call costing as much host CPU time as wall time, for a
    graph replay of 0.83 to 0.85 ms. A module that cannot be captured is timed eagerly, and its
    provider says so.
    """

    def __init__(self, module, input_shape: tuple[int, ...], device: str, precision: str = "fp32"):
        import torch

        if precision not in TORCH_DTYPES:
            raise ConfigError(f"precision {precision!r}: PyTorch timing supports {', '.join(TORCH_DTYPES)}")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ConfigError("runtime torch-cuda needs a CUDA GPU; torch finds none on this machine")
        dtype = getattr(torch, TORCH_DTYPES[precision])
        # A copy: moving and casting must never touch a module the caller keeps (a supernet's part).
        self.module = copy.deepcopy(module).eval().to(self.device, dtype)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(input_shape, generator=generator).to(self.device, dtype)
        self.sync = torch.cuda.synchronize if cuda else None
        self.graph = self._capture() if cuda else None
        if cuda:
            mode = "CUDA graph" if self.graph is not None else "CUDA, eager: graph capture failed"
            where = f"{torch.cuda.get_device_name(self.device)} ({mode})"
        else:
            where = self.device.type.upper()
        self.provider = f"torch {torch.__version__} {where} {precision}"

    def _capture(self):
        import torch

        try:
            with torch.inference_mode():
                # Warm up on a side stream first (cuDNN chooses its kernels), as CUDA graph capture requires.
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self.module(self.x)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._out = self.module(self.x)
            return graph
        except RuntimeError as err:  # an operation that cannot be captured (a host sync, a dynamic shape)
            log.info("CUDA graph capture failed (%s): timing eager calls", err)
            return None

    def call(self) -> None:
        import torch

        with torch.inference_mode():
            if self.graph is not None:
                self.graph.replay()
            else:
                self.module(self.x)

    def close(self) -> None:
        self.module = self.x = self.graph = self._out = None


def time_torch_modules(profile: HardwareProfile, modules: list[tuple[str, Callable[[], object], tuple[int, ...]]],
                       protocol: TimingProtocol, seed: int,
                       advance: Callable[[], None] | None = None) -> tuple[dict[str, dict], list[str]]:
    """Time PyTorch modules on the profile's torch device with the tables' protocol; returns each
    one's figures (per image) by name, and the providers that ran them. ``modules`` lists
    (name, build, input_shape)."""
    import torch

    device = TORCH_DEVICES[profile.runtime]
    items: dict[str, TorchItem] = {}
    try:
        with torch.no_grad():
            for name, build, input_shape in modules:
                items[name] = TorchItem(build(), (profile.batch_size, *input_shape[1:]), device, profile.precision)
        sync = next(iter(items.values())).sync if items else None
        results = time_in_rounds({n: i.call for n, i in items.items()}, protocol, seed=seed,
                                 sync=sync, advance=advance)
    finally:
        for item in items.values():
            item.close()
    batch = profile.batch_size
    return ({n: {**r, "median_ms": r["median_ms"] / batch, "p90_ms": r["p90_ms"] / batch,
                 "rounds_median_ms": [round(m / batch, 6) for m in r["rounds_median_ms"]]} for n, r in results.items()},
            sorted({i.provider for i in items.values()}))
