"""How far the search's proxy can be trusted: rank correlation between inherited-weight accuracy (BN
recalibrated, exactly as the search scores a path) and stand-alone accuracy (each path trained alone,
from scratch), for a supernet pretrained with uniform single-path sampling (SPOS) and one pretrained
with fair sampling (FairNAS), at the same number of image-passes.

    python benchmarks/supernet_ranking.py [--paths 16] [--fair-epochs 10] [--standalone-epochs 20]
                                          [--n-per-class 800] [--bn-images 256] [--threads N] [--work DIR]
                                          [--ceiling] [--seed 0] [--json] [--only supernets|alone [--slice K/N]]

The paths are spread over the FLOPs range of the demo space (the pipeline's DEMO_SPACE / DEMO_DATA):
every path's FLOPs are counted (fvcore) and the paths at evenly spaced FLOPs ranks are taken. A fair
step trains m paths (4 here) on one batch, so the uniform supernet gets m times the fair one's epochs:
both see the same image-passes. Kendall tau-b and Spearman's rho come with a 95 % bootstrap interval
over the paths (scipy.stats.bootstrap, paired resampling). Every stand-alone path goes through
`pathnas.retrain.retrain(from_scratch=True)`. Everything trains and evaluates from a pack of the data
(`pathnas-edge data pack`, the fast data path), which is what makes a ground truth worth ranking against
affordable here: 800 images per class (480 validation images, 0.21-point steps) and 20 stand-alone epochs.
--ceiling trains every path a second time with another seed and ranks the two stand-alone results against
each other: no proxy can agree with the ground truth better than the ground truth agrees with itself.
--work keeps the data, both supernets and each path's
training, so a second run only prints (and a killed one resumes); --only runs one part, so parts can run
at once in several processes on the same --work. The FLOPs row is the floor a supernet must beat: the
paths ranked by their FLOPs alone. Use --threads 1 on a shared CPU (two torch threads per process on a
busy 2-core machine trained 10x slower than one).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from pathnas.cost import measure_cost
from pathnas.data import build_loaders, generate, list_classes, load_or_create_splits
from pathnas.data.shards import pack
from pathnas.errors import RunLockedError
from pathnas.pipeline.run import DEMO_DATA, DEMO_SPACE
from pathnas.retrain import retrain
from pathnas.search.targets import calibration_batches
from pathnas.settings import PretrainConfig, RetrainConfig
from pathnas.spaces import build_supernet, space_config
from pathnas.subnet import build_subnet, save_subnet
from pathnas.train import evaluate_architecture, pretrain, primary_metric
from pathnas.train.spos import fair_path_count

SAMPLERS = ("uniform", "fair")


def paths_over_flops(space_cfg, count: int, seed: int, pool: int) -> list[tuple[object, float]]:
    """``count`` paths at evenly spaced ranks of FLOPs among ``pool`` distinct random paths (fvcore counts
    each path by tracing it, about a second on a busy CPU, so not the whole space)."""
    net = build_supernet(space_cfg)
    generator = torch.Generator().manual_seed(seed)
    candidates: dict[str, object] = {}
    while len(candidates) < min(pool, net.space.size()):
        arch = net.space.sample(generator)
        candidates.setdefault(arch.code, arch)
    shape = (1, space_cfg.in_chans, space_cfg.input_size, space_cfg.input_size)
    costed = sorted(((a, measure_cost(net.extract(a), shape).flops) for a in candidates.values()),
                    key=lambda pair: (pair[1], pair[0].code))
    picks = np.linspace(0, len(costed) - 1, min(count, len(costed))).round().astype(int)
    return [costed[i] for i in dict.fromkeys(picks.tolist())]


def correlation(x: list[float], y: list[float], seed: int) -> dict:
    """Kendall tau-b and Spearman rho, each with a 95 % paired bootstrap interval."""
    out = {}
    for name, fn in (("kendall_tau_b", lambda a, b: stats.kendalltau(a, b).statistic),
                     ("spearman_rho", lambda a, b: stats.spearmanr(a, b).statistic)):
        value = float(fn(x, y))
        boot = stats.bootstrap((np.asarray(x), np.asarray(y)), fn, paired=True, vectorized=False,
                               n_resamples=2000, confidence_level=0.95, method="percentile",
                               random_state=np.random.default_rng(seed))
        low, high = boot.confidence_interval
        out[name] = {"value": value, "ci95": [float(low), float(high)]}
    return out


def standalone(config, data: Path, arch, work: Path, args, seed: int | None = None) -> dict:
    """One path trained alone from scratch (resumed or read back when --work holds it); ``seed`` other than
    --seed trains it again into a folder of its own."""
    seed = args.seed if seed is None else seed
    subnet = work / "paths" / arch.code / "subnet.pt"
    if not subnet.exists():
        subnet.parent.mkdir(parents=True, exist_ok=True)
        net = build_supernet(config)
        save_subnet(subnet, build_subnet(config.model_dump(mode="json"), arch.code), config.model_dump(mode="json"),
                    arch.code, net.task, list_classes(data))
    return retrain(subnet, RetrainConfig(data=data, epochs=args.standalone_epochs, batch_size=32, lr=0.02,
                                         from_scratch=True, mixup_alpha=0, cutmix_alpha=0, seed=seed,
                                         device="cpu"),
                   work / "paths" / arch.code / ("alone" if seed == args.seed else f"alone-seed{seed}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=16)
    parser.add_argument("--pool", type=int, default=64, help="random paths whose FLOPs are counted to pick from")
    parser.add_argument("--fair-epochs", type=int, default=10,
                        help="fair supernet epochs; the uniform one gets m times as many (same image-passes)")
    parser.add_argument("--standalone-epochs", type=int, default=20)
    parser.add_argument("--n-per-class", type=int, default=800, help="synthetic images per class (15 %% are val)")
    parser.add_argument("--ceiling", action="store_true",
                        help="train every path a second time (seed + 1): how well the ground truth ranks itself")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bn-images", type=int, default=256)
    parser.add_argument("--samplers", default="uniform,fair", help="comma-separated: uniform, fair")
    parser.add_argument("--only", choices=("supernets", "alone"), default=None,
                        help="do one part and stop (parts may run at once in several processes on one --work)")
    parser.add_argument("--slice", default="0/1", help="with --only alone: K/N trains paths K, K+N, K+2N...")
    parser.add_argument("--reverse", action="store_true", help="with --only alone: the slice's paths last first "
                                                                   "(a second process on the same slice)")
    parser.add_argument("--work", type=Path, default=None, help="keep data, supernets and trainings here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="supernet-ranking-") as tmp:
            run(args, Path(tmp))
    else:
        run(args, args.work)


def run(args, work: Path) -> None:
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    samplers = [s for s in args.samplers.split(",") if s]
    if not samplers or set(samplers) - set(SAMPLERS):
        sys.exit(f"error: --samplers {args.samplers!r}: allowed values are {', '.join(SAMPLERS)}")
    folder = work / "data"
    generate(folder, "classify", seed=args.seed, **{**DEMO_DATA, "n_per_class": args.n_per_class})
    load_or_create_splits(folder, seed=args.seed)
    knobs = {k: v for k, v in DEMO_SPACE.items() if k != "space"}
    config = space_config(DEMO_SPACE["space"], **knobs, num_classes=len(list_classes(folder)))
    data = work / "pack"  # tiles at the input size: what the folder path resizes every image to first
    pack(folder, data, size=config.input_size, seed=args.seed)
    reference = build_supernet(config)
    passes, key = fair_path_count(reference.space), primary_metric(reference.task)
    epochs = {"fair": args.fair_epochs, "uniform": args.fair_epochs * passes}
    loaders = build_loaders(data, config.input_size, 64, seed=args.seed)
    calibration = calibration_batches(loaders.calib, args.bn_images)  # as the search recalibrates every path
    paths = paths_over_flops(config, args.paths, args.seed, args.pool)
    if args.only == "alone":
        k, n = (int(v) for v in args.slice.split("/"))
        for arch, _ in paths[k::n][::-1 if args.reverse else 1]:
            for seed in (args.seed, args.seed + 1) if args.ceiling else (args.seed,):
                try:
                    standalone(config, data, arch, work, args, seed)
                except RunLockedError:  # another process of this slice trains it
                    continue
        return
    inherited: dict[str, list[float]] = {}
    for sampler in samplers:
        cfg = PretrainConfig(data=data, run_dir=work / f"supernet-{sampler}", epochs=epochs[sampler], batch_size=32,
                             lr=0.02, mixup_alpha=0, cutmix_alpha=0, workers=0, seed=args.seed, eval_paths=0,
                             device="cpu", sampler=sampler)
        supernet = pretrain(config, cfg, resume=True, progress=False).supernet.eval()
        if args.only == "supernets":
            continue
        inherited[sampler] = [evaluate_architecture(supernet, arch, calibration, loaders.val, loaders.num_classes,
                                                    torch.device("cpu"), args.bn_images)[key] for arch, _ in paths]
    if args.only == "supernets":
        return
    alone = [standalone(config, data, arch, work, args)["val"][key] for arch, _ in paths]
    results = {s: correlation(inherited[s], alone, args.seed) for s in samplers}
    # The floor a supernet must beat: ranking the paths by their FLOPs alone, no training at all.
    results["FLOPs"] = correlation([f for _, f in paths], alone, args.seed)
    again = None
    if args.ceiling:  # the ground truth against itself, trained again with another seed
        again = [standalone(config, data, arch, work, args, args.seed + 1)["val"][key] for arch, _ in paths]
        results["ceiling"] = correlation(again, alone, args.seed)
    seconds = time.perf_counter() - started
    if args.json:
        json.dump({"space": config.model_dump(mode="json"), "metric": key, "epochs": epochs, "passes": passes,
                   "standalone_epochs": args.standalone_epochs, "n_per_class": args.n_per_class,
                   "val_images": len(loaders.val.dataset), "bn_images": args.bn_images, "seconds": seconds,
                   "correlation": results,
                   "paths": [{"arch": a.code, "mflops": f / 1e6, "standalone": s,
                              **({"standalone_again": again[i]} if again else {}),
                              **{f"inherited_{k}": v[i] for k, v in inherited.items()}}
                             for i, ((a, f), s) in enumerate(zip(paths, alone))]}, sys.stdout, indent=2)
        print()
        return
    print(f"# demo space {config.space} (input {config.input_size}, width {config.width_mult}, stages "
          f"{list(config.stage_repeats)}), {key} on val; {len(paths)} paths over the FLOPs range")
    print(f"# supernets: " + ", ".join(f"{s} {epochs[s]} epochs" for s in samplers)
          + f" (same image-passes); BN recalibration on {args.bn_images} images; each path alone "
            f"{args.standalone_epochs} epochs from scratch; {len(loaders.val.dataset)} val images")
    print(f"| {'path':<8} | MFLOPs | " + " | ".join(f"{s:>7}" for s in samplers) + " | alone |"
          + (" again |" if again else ""))
    print("|----------|--------|" + "|".join("-" * 9 for _ in samplers) + "|-------|" + ("-------|" if again else ""))
    for i, ((arch, flops), alone_metric) in enumerate(zip(paths, alone)):
        print(f"| {arch.code:<8} | {flops / 1e6:6.2f} | " + " | ".join(f"{inherited[s][i]:7.2f}" for s in samplers)
              + f" | {alone_metric:5.1f} |" + (f" {again[i]:5.1f} |" if again else ""))
    if again:
        print(f"\nalone vs again (another seed): mean |difference| {np.mean(np.abs(np.subtract(alone, again))):.2f} "
              f"points; the paths' own spread (std) {np.std(alone):.2f} and {np.std(again):.2f}")
    print(f"\n| sampler | Kendall tau-b [95% CI]  | Spearman rho [95% CI]   |")
    print("|---------|-------------------------|-------------------------|")
    for s in results:
        cells = [f"{r['value']:5.2f} [{r['ci95'][0]:5.2f}, {r['ci95'][1]:5.2f}]" for r in
                 (results[s]["kendall_tau_b"], results[s]["spearman_rho"])]
        print(f"| {s:<7} | {cells[0]:<23} | {cells[1]:<23} |")
    print(f"\n{seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
