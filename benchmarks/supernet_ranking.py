"""How far the search's proxy can be trusted: Kendall tau between inherited-weight accuracy (BN
recalibrated, exactly as the search scores a path) and stand-alone accuracy (each path trained alone,
briefly, from scratch) over paths of the demo space.

    python benchmarks/supernet_ranking.py [--paths 12] [--pretrain-epochs 20] [--standalone-epochs 6]
                                          [--work DIR] [--seed 0] [--json]

The demo space and data are the pipeline's (pathnas.pipeline.run.DEMO_SPACE / DEMO_DATA, built
through their config objects); the supernet is pretrained as the pipeline does; every stand-alone
path goes through `pathnas.retrain.retrain(from_scratch=True)` with the same settings. --work keeps
the data, the supernet and each path's training, so a second run only prints (and a killed one
resumes). On 2 CPU cores: a few minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from pathnas.data import build_loaders, generate, list_classes, load_or_create_splits
from pathnas.pipeline.run import DEMO_DATA, DEMO_SPACE
from pathnas.retrain import retrain
from pathnas.search.targets import calibration_batches
from pathnas.settings import PretrainConfig, RetrainConfig
from pathnas.spaces import space_config
from pathnas.subnet import extract
from pathnas.train import evaluate_architecture, pretrain, primary_metric


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking accounted for)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")


def pick_paths(space, count: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    paths: dict[str, object] = {}
    while len(paths) < min(count, space.size()):
        arch = space.sample(generator)
        paths.setdefault(arch.code, arch)
    return list(paths.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", type=int, default=12)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--standalone-epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--bn-images", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="keep data, supernet and trainings here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="supernet-ranking-") as tmp:
            run(args, Path(tmp))
    else:
        run(args, args.work)


def run(args, work: Path) -> None:
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = work / "data"
    if not (data / "dataset.json").exists():
        generate(data, "classify", seed=args.seed, **DEMO_DATA)
    load_or_create_splits(data, seed=args.seed)
    knobs = {k: v for k, v in DEMO_SPACE.items() if k != "space"}
    config = space_config(DEMO_SPACE["space"], **knobs, num_classes=len(list_classes(data)))
    cfg = PretrainConfig(data=data, run_dir=work / "supernet", epochs=args.pretrain_epochs, batch_size=32, lr=0.02,
                         mixup_alpha=0, cutmix_alpha=0, workers=0, seed=args.seed, eval_paths=0, device="cpu")
    supernet = pretrain(config, cfg, resume=True, progress=False).supernet.eval()
    loaders = build_loaders(data, config.input_size, 64, seed=args.seed)
    calibration = calibration_batches(loaders.calib, args.bn_images)  # as the search recalibrates every path
    key = primary_metric(supernet.task)
    rows = []
    for arch in pick_paths(supernet.space, args.paths, args.seed):
        inherited = evaluate_architecture(supernet, arch, calibration, loaders.val, loaders.num_classes,
                                          torch.device("cpu"), args.bn_images)[key]
        subnet = work / "paths" / arch.code / "subnet.pt"
        if not subnet.exists():
            extract(work / "supernet" / "last.pt", arch.code, subnet)
        alone = retrain(subnet, RetrainConfig(data=data, epochs=args.standalone_epochs, batch_size=32, lr=0.02,
                                              from_scratch=True, mixup_alpha=0, cutmix_alpha=0, seed=args.seed,
                                              device="cpu"), work / "paths" / arch.code / "alone")
        rows.append({"arch": arch.code, "inherited": inherited, "standalone": alone["val"][key]})
    tau = kendall_tau_b([r["inherited"] for r in rows], [r["standalone"] for r in rows])
    if args.json:
        json.dump({"space": config.model_dump(mode="json"), "metric": key, "pretrain_epochs": args.pretrain_epochs,
                   "standalone_epochs": args.standalone_epochs, "kendall_tau_b": tau, "paths": rows}, sys.stdout,
                  indent=2)
        print()
        return
    print(f"# demo space {config.space} (input {config.input_size}, width {config.width_mult}, stages "
          f"{list(config.stage_repeats)}), {key} on val\n# {len(rows)} paths; supernet {args.pretrain_epochs} "
          f"epochs; each path alone {args.standalone_epochs} epochs from scratch")
    width = max(4, *(len(r["arch"]) for r in rows))
    print(f"| {'path':<{width}} | inherited (BN recal.) | stand-alone | rank inh. | rank alone |")
    print(f"|{'-' * (width + 2)}|-----------------------|-------------|-----------|------------|")
    rank = {name: {r["arch"]: i + 1 for i, r in enumerate(sorted(rows, key=lambda r: -r[name]))}
            for name in ("inherited", "standalone")}
    for r in rows:
        print(f"| {r['arch']:<{width}} | {r['inherited']:>21.2f} | {r['standalone']:>11.2f} | "
              f"{rank['inherited'][r['arch']]:>9} | {rank['standalone'][r['arch']]:>10} |")
    print(f"\nKendall tau-b (inherited vs stand-alone): {tau:.3f}")


if __name__ == "__main__":
    main()
