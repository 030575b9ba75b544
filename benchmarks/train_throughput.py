"""Supernet training throughput and subnet evaluation throughput (with BN recalibration) on this machine.

    python benchmarks/train_throughput.py [--space shufflenet] [--input-size 64] [--width-mult 0.5]
                                          [--batch-size 32] [--steps 30] [--paths 5] [--json]

Training: SPOS steps (a fresh uniformly sampled path per step, mixup, SGD) on the
synthetic data set, after warm-up steps. Evaluation: extract a path, recalibrate its
BN statistics on `--bn-images` training images, evaluate it on the validation split;
throughput counts every image pushed through the network (recalibration + validation).
Prints a table; `--json` prints the same figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from pathnas.data import build_loaders, generate
from pathnas.spaces import build_supernet, space_config
from pathnas.train import OptimConfig, build_training, evaluate, path_generator, recalibrate_bn, train_epoch
from pathnas.train.distributed import DistContext


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="shufflenet", choices=["shufflenet", "unet", "vit"])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--paths", type=int, default=5, help="paths evaluated")
    parser.add_argument("--bn-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    task = "segment" if args.space == "unet" else "classify"
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "data", task, n_per_class=100, image_size=args.input_size, seed=0)
        data = build_loaders(Path(tmp) / "data", args.input_size, args.batch_size, workers=0)
        knobs = dict(input_size=args.input_size, width_mult=args.width_mult, num_classes=data.num_classes)
        if args.space == "vit":
            knobs.update(embed_dim=96, head_dim=16, patch_size=8)
        net = build_supernet(space_config(args.space, **knobs))
        ctx = DistContext(0, 1, 0, torch.device("cpu"))
        cfg = OptimConfig(epochs=1, batch_size=args.batch_size, lr=0.1, max_steps_per_epoch=args.warmup_steps)
        parts = build_training(net, task, data.num_classes, cfg, len(data.train), ctx.device)

        def forward(x, step):
            return net(x, net.sample(path_generator(0, 0, step)))

        net.train()
        train_epoch(forward, data.train, parts, 0, ctx)  # warm-up
        parts.steps_per_epoch = min(args.steps, len(data.train))  # the timed epoch
        train_ips = train_epoch(forward, data.train, parts, 1, ctx)["train_images_per_s"]
        timed_steps = parts.steps_per_epoch

        gen = torch.Generator().manual_seed(1)
        images, start = 0, time.perf_counter()
        for _ in range(args.paths):
            subnet = net.extract(net.sample(gen))
            images += recalibrate_bn(subnet, data.calib, args.bn_images, ctx.device)
            evaluate(subnet, data.val, task, data.num_classes, ctx.device)
            images += len(data.val.dataset)
        eval_seconds = time.perf_counter() - start

    result = {
        "space": args.space, "input_size": args.input_size, "width_mult": args.width_mult,
        "batch_size": args.batch_size, "threads": args.threads, "cpu": cpu_model(), "torch": torch.__version__,
        "train_steps_timed": timed_steps, "train_images_per_s": round(train_ips, 1),
        "eval_paths": args.paths, "bn_images_per_path": args.bn_images,
        "eval_images_per_s": round(images / eval_seconds, 1),
        "eval_seconds_per_path": round(eval_seconds / args.paths, 3),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"# {result['cpu']}, {args.threads} threads, torch {torch.__version__}")
    print(f"# {args.space}: input {args.input_size}, width x{args.width_mult}, batch {args.batch_size}")
    print(f"| measurement | value |\n|---|---|")
    print(f"| supernet training (SPOS, mixup, SGD) | {result['train_images_per_s']} images/s |")
    print(f"| subnet evaluation incl. BN recalibration ({args.bn_images} images) | {result['eval_images_per_s']} images/s |")
    print(f"| seconds per evaluated path | {result['eval_seconds_per_path']} s |")


if __name__ == "__main__":
    main()
