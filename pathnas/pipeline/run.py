"""`pathnas-edge pipeline`: every stage in one run directory, on the embedded default unless told otherwise."""
from __future__ import annotations

from pathlib import Path

from pathnas.io import read_json, write_json_atomic
from pathnas.settings import PretrainConfig, RetrainConfig, SearchSettings

from . import stages
from .layout import RunLayout

# The embedded default: CPU-sized, learns on the synthetic data in a few minutes on 2 cores.
DEMO_SPACE = {"space": "shufflenet", "input_size": 64, "width_mult": 0.5, "stage_repeats": [1, 1, 2, 1]}
DEMO_DATA = {"n_per_class": 200, "image_size": 64}


def run_pipeline(run: Path, data: Path | None = None, device: str = "cpu", proposer: str = "auto",
                 iterations: int = 10, budget_ms: float | None = None, budget_mflops: float | None = None,
                 pretrain_epochs: int = 20, retrain_epochs: int = 10,
                 formats: tuple[str, ...] = ("onnx", "openvino", "tensorrt"),
                 precisions: tuple[str, ...] | None = None, seed: int = 0, progress: bool = True,
                 space: dict | None = None) -> dict:
    """Data -> supernet -> latency table -> search -> extract -> retrain -> export (+ quantize) -> validate."""
    from pathnas.data import list_classes, load_or_create_splits
    from pathnas.profiling import load_profile
    from pathnas.spaces import space_config
    from pathnas.train import load_supernet

    layout = RunLayout(Path(run))
    layout.root.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = stages.stage_data(layout, seed=seed, **DEMO_DATA)
    load_or_create_splits(data)  # drawn before any stage hashes the data folder, so later runs see the same hash
    space = space or DEMO_SPACE
    config = space_config(space["space"], **{k: v for k, v in space.items() if k != "space"},
                          num_classes=len(list_classes(data)))
    pretrain_cfg = PretrainConfig(data=data, run_dir=layout.supernet_dir, epochs=pretrain_epochs, batch_size=32,
                                  lr=0.02, mixup_alpha=0, cutmix_alpha=0, workers=0, seed=seed, eval_paths=2)
    supernet_ckpt = stages.stage_pretrain(layout, config, pretrain_cfg, progress)

    profile = load_profile(device)
    if precisions is None:
        # The canonical FP32 plus what the device runs. INT8 only where a profile asks for it: on the
        # x86 CPUs measured here (AVX2, no VNNI) INT8 was slower than FP32 and missed the agreement
        # threshold on the demo model (benchmarks/export_latency.py), so the CPU profiles say fp32.
        precisions = tuple(sorted({"fp32", profile.precision}))
    supernet, _ = load_supernet(supernet_ckpt)
    latency_table = stages.stage_profile(layout, profile, supernet)
    search = SearchSettings(device=device, supernet=supernet_ckpt, data=data, run_dir=layout.search_dir,
                            budget_ms=budget_ms, budget_mflops=budget_mflops, iterations=iterations, proposer=proposer,
                            latency_table=latency_table, seed=seed, resume=True)
    stages.stage_search(layout, search)
    stages.stage_extract(layout, supernet_ckpt)
    retrain_cfg = RetrainConfig(data=data, epochs=retrain_epochs, batch_size=32, lr=0.01, mixup_alpha=0,
                                cutmix_alpha=0, warmup_epochs=0, seed=seed)
    retrained = stages.stage_retrain(layout, retrain_cfg)
    stages.stage_export(layout, data, list(formats), list(precisions))
    report = stages.stage_validate(layout, data, threads=profile.threads if profile.runs_here() else None)
    summary = {"run_dir": str(layout.root), "device": profile.name,
               "search": read_json(layout.search_summary, "search summary")["best"],
               "retrain": retrained, "validation_passed": report["passed"]}
    write_json_atomic(layout.summary, summary)
    return summary
