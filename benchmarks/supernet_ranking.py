"""How far the search's proxy can be trusted: rank correlation between inherited-weight accuracy (BN
recalibrated, exactly as the search scores a path) and stand-alone accuracy (each path trained alone,
from scratch), for a supernet pretrained with uniform single-path sampling (SPOS), one pretrained
with fair sampling (FairNAS) and one with skip-balanced sampling (the number of 'id' layers uniform),
at the same number of image-passes; and what each remedy for the under-rating of skip-heavy paths does.

    python benchmarks/supernet_ranking.py [--paths 16] [--fair-epochs 10] [--standalone-epochs 20]
                                          [--n-per-class 800] [--bn-images 256] [--threads N] [--work DIR]
                                          [--samplers uniform,fair,balanced] [--remedies bn,bn-more,tie]
                                          [--ceiling] [--seed 0] [--supernet-seed N] [--json]
                                          [--only supernets|alone [--slice K/N]]

Remedies on the evaluation side, per supernet: ``bn`` (today: BN recalibrated per path on --bn-images
training images), ``bn-more`` (per path on --bn-images-more, default 2048: the whole training split
nearly), ``tie`` (the ``bn`` accuracies, paths within --tie points of each other ranked by FLOPs: the
free proxy as a tie-breaker), ``finetune`` (the ``bn`` evaluation after --finetune-epochs, default 1,
of training of the path alone, as the search's --finetune-epochs does). Per column: Kendall tau-b and Spearman rho against stand-alone with
95 % bootstrap intervals, the share of paths whose inherited accuracy is within 5 points of their
stand-alone accuracy, and the worst under-rating: a path's inherited rank minus its stand-alone rank,
against the goal of at most a third of the ranking.

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
from pathnas.train import evaluate_architecture, finetune_architecture, pretrain, primary_metric
from pathnas.train.spos import fair_path_count

SAMPLERS = ("uniform", "fair", "balanced")
REMEDIES = ("bn", "bn-more", "tie", "finetune")


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


def short(column: str) -> str:
    """A column's name in the 80-column tables: U bn, B bn+, F ft ..."""
    sampler, _, remedy = column.partition(" ")
    if not remedy:
        return column
    return f"{sampler[0].upper()} {({'bn-more': 'bn+', 'finetune': 'ft'}).get(remedy, remedy)}"


def cached(work: Path, name: str, paths, compute) -> list[float]:
    """One column of inherited accuracies, kept in --work (inherited/NAME.json, keyed by the paths) so that a
    second run prints without evaluating again."""
    path = work / "inherited" / f"{name}.json"
    codes = [a.code for a, _ in paths]
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("paths") == codes:
            return saved["accuracy"]
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"paths": codes, "accuracy": values}))
    return values


def tie_broken(accuracy: list[float], flops: list[float], tie: float) -> list[float]:
    """A score that orders paths by accuracy, those within ``tie`` points of each other (binned) by FLOPs."""
    order = sorted(range(len(accuracy)), key=lambda i: (round(accuracy[i] / tie), flops[i]))
    score = [0.0] * len(accuracy)
    for rank, i in enumerate(order):
        score[i] = float(rank)
    return score


def fidelity(score: list[float], accuracy: list[float] | None, alone: list[float], seed: int) -> dict:
    """How a column ranks the paths against stand-alone: correlations with intervals, the share of paths
    within 5 points of stand-alone, and the worst under-rating (inherited rank - stand-alone rank; rank 1 best)."""
    n = len(alone)
    inherited_rank = stats.rankdata([-v for v in score])
    alone_rank = stats.rankdata([-v for v in alone])
    drop = inherited_rank - alone_rank
    worst = int(np.argmax(drop))
    return {**correlation(score, alone, seed),
            "within_5_points": None if accuracy is None else int(sum(abs(a - b) <= 5 for a, b in zip(accuracy, alone))),
            "worst": {"index": worst, "inherited_rank": float(inherited_rank[worst]),
                      "alone_rank": float(alone_rank[worst]), "drop": float(drop[worst])},
            "goal_met": bool(drop.max() <= n / 3)}


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
    parser.add_argument("--bn-images-more", type=int, default=2048, help="BN recalibration images of remedy bn-more")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="epochs of remedy finetune")
    parser.add_argument("--tie", type=float, default=1.0, help="remedy tie: accuracies within this many points tie")
    parser.add_argument("--samplers", default="uniform,fair", help="comma-separated: " + ", ".join(SAMPLERS))
    parser.add_argument("--remedies", default="bn", help="comma-separated: " + ", ".join(REMEDIES))
    parser.add_argument("--only", choices=("supernets", "alone"), default=None,
                        help="do one part and stop (parts may run at once in several processes on one --work)")
    parser.add_argument("--slice", default="0/1", help="with --only alone: K/N trains paths K, K+N, K+2N...")
    parser.add_argument("--reverse", action="store_true", help="with --only alone: the slice's paths last first "
                                                                   "(a second process on the same slice)")
    parser.add_argument("--work", type=Path, default=None, help="keep data, supernets and trainings here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--supernet-seed", type=int, default=None,
                        help="train the supernets with this seed (same data, paths and stand-alone trainings): "
                             "how much of a difference between columns is the supernet's own seed")
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
    remedies = [r for r in args.remedies.split(",") if r]
    if not remedies or set(remedies) - set(REMEDIES):
        sys.exit(f"error: --remedies {args.remedies!r}: allowed values are {', '.join(REMEDIES)}")
    folder = work / "data"
    generate(folder, "classify", seed=args.seed, **{**DEMO_DATA, "n_per_class": args.n_per_class})
    load_or_create_splits(folder, seed=args.seed)
    knobs = {k: v for k, v in DEMO_SPACE.items() if k != "space"}
    config = space_config(DEMO_SPACE["space"], **knobs, num_classes=len(list_classes(folder)))
    data = work / "pack"  # tiles at the input size: what the folder path resizes every image to first
    pack(folder, data, size=config.input_size, seed=args.seed)
    reference = build_supernet(config)
    passes, key = fair_path_count(reference.space), primary_metric(reference.task)
    epochs = {"fair": args.fair_epochs, "uniform": args.fair_epochs * passes, "balanced": args.fair_epochs * passes}
    loaders = build_loaders(data, config.input_size, 64, seed=args.seed)
    calibration = calibration_batches(loaders.calib, args.bn_images)  # as the search recalibrates every path
    more = calibration_batches(loaders.calib, args.bn_images_more) if "bn-more" in remedies else None
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
    inherited: dict[str, list[float]] = {}  # column (sampler, remedy) -> accuracy per path
    scores: dict[str, list[float]] = {}  # column -> what ranks the paths (the accuracy, or the tie-broken order)
    for sampler in samplers:
        name = sampler if args.supernet_seed is None else f"{sampler}-seed{args.supernet_seed}"
        cfg = PretrainConfig(data=data, run_dir=work / f"supernet-{name}", epochs=epochs[sampler], batch_size=32,
                             lr=0.02, mixup_alpha=0, cutmix_alpha=0, workers=0, eval_paths=0,
                             seed=args.seed if args.supernet_seed is None else args.supernet_seed,
                             device="cpu", sampler=sampler)
        supernet = pretrain(config, cfg, resume=True, progress=False).supernet.eval()
        if args.only == "supernets":
            continue
        def scored(batches, images: int) -> list[float]:
            return [evaluate_architecture(supernet, arch, batches, loaders.val, loaders.num_classes,
                                          torch.device("cpu"), images)[key] for arch, _ in paths]

        def finetuned() -> list[float]:
            return [finetune_architecture(supernet, arch, calibration, loaders.train, loaders.val, loaders.num_classes,
                                          torch.device("cpu"), args.bn_images, args.finetune_epochs, 64,
                                          args.seed)[key] for arch, _ in paths]

        base = cached(work, f"{name}-bn{args.bn_images}", paths, lambda: scored(calibration, args.bn_images))
        for remedy in remedies:
            column = f"{sampler} {remedy}"
            if remedy == "finetune":
                inherited[column] = cached(work, f"{name}-bn{args.bn_images}-ft{args.finetune_epochs}", paths,
                                           finetuned)
            elif remedy == "bn-more":
                inherited[column] = cached(work, f"{name}-bn{args.bn_images_more}", paths,
                                           lambda: scored(more, args.bn_images_more))
            else:
                inherited[column] = base
            scores[column] = (tie_broken(base, [f for _, f in paths], args.tie) if remedy == "tie"
                              else inherited[column])
    if args.only == "supernets":
        return
    alone = [standalone(config, data, arch, work, args)["val"][key] for arch, _ in paths]
    results = {c: fidelity(scores[c], inherited[c], alone, args.seed) for c in inherited}
    # The floor a supernet must beat: ranking the paths by their FLOPs alone, no training at all.
    results["FLOPs"] = fidelity([f for _, f in paths], None, alone, args.seed)
    again = None
    if args.ceiling:  # the ground truth against itself, trained again with another seed
        again = [standalone(config, data, arch, work, args, args.seed + 1)["val"][key] for arch, _ in paths]
        results["ceiling"] = fidelity(again, again, alone, args.seed)
    seconds = time.perf_counter() - started
    if args.json:
        json.dump({"space": config.model_dump(mode="json"), "metric": key, "epochs": epochs, "passes": passes,
                   "standalone_epochs": args.standalone_epochs, "n_per_class": args.n_per_class,
                   "val_images": len(loaders.val.dataset), "bn_images": args.bn_images,
                   "bn_images_more": args.bn_images_more, "tie_points": args.tie, "seconds": seconds,
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
          + (f", trained with seed {args.supernet_seed}" if args.supernet_seed is not None else "")
          + f" (same image-passes); BN recalibration per path on {args.bn_images} images (bn) or "
            f"{args.bn_images_more} (bn-more); each path alone {args.standalone_epochs} epochs from scratch; "
            f"{len(loaders.val.dataset)} val images")
    columns = [c for c in inherited if not c.endswith(" tie")]  # tie ranks the bn accuracies: no column of its own
    print(f"| {'path':<5} | MFLOPs | " + " | ".join(f"{short(c):>6}" for c in columns) + " | alone |"
          + (" again |" if again else ""))
    print("|-------|--------|" + "|".join("-" * 8 for _ in columns) + "|-------|" + ("-------|" if again else ""))
    for i, ((arch, flops), alone_metric) in enumerate(zip(paths, alone)):
        print(f"| {arch.code:<5} | {flops / 1e6:6.2f} | " + " | ".join(f"{inherited[c][i]:6.1f}" for c in columns)
              + f" | {alone_metric:5.1f} |" + (f" {again[i]:5.1f} |" if again else ""))
    if again:
        print(f"\nalone vs again (another seed): mean |difference| {np.mean(np.abs(np.subtract(alone, again))):.2f} "
              f"points; the paths' own spread (std) {np.std(alone):.2f} and {np.std(again):.2f}")
    n = len(paths)
    print(f"\nagainst stand-alone: tau-b [95% CI]; paths within 5 points; the worst under-rated path\n"
          f"(inherited rank vs alone, 1 = best; goal: at most {n / 3:.1f} ranks lower)")
    print("| column     | Kendall tau-b [95% CI] | within 5 | worst under-rated      |")
    print("|------------|------------------------|----------|------------------------|")
    for c, r in results.items():
        tau = r["kendall_tau_b"]
        w = r["worst"]
        worst = f"{paths[w['index']][0].code} {w['inherited_rank']:4.1f} vs {w['alone_rank']:4.1f} " + \
            ("ok" if r["goal_met"] else "NO")
        cell = f"{tau['value']:5.2f} [{tau['ci95'][0]:5.2f}, {tau['ci95'][1]:5.2f}]"
        print(f"| {short(c):<10} | {cell:<22} | "
              f"{'-' if r['within_5_points'] is None else r['within_5_points']:>3}/{n:<4} | {worst:<22} |")
    print(f"\n{seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
