"""Supernet training throughput against training one fixed path, and subnet evaluation throughput.

    python benchmarks/train_throughput.py [--device auto|cpu|cuda] [--space shufflenet] [--input-size N]
        [--width-mult W] [--batch-size B] [--steps 30] [--paths 5] [--pack DIR [--workers 8]] [--json]

Training runs the project's one training loop (pathnas.train.train_epoch: SGD, AMP on CUDA) twice
on the same in-memory batches, so data loading does not hide the model's speed:
- the SPOS supernet, a fresh uniformly sampled path every step;
- the largest single path of the space (the last option of every decision) extracted as a plain
  model, the "timm-style" baseline.
With --pack (a 4-class pack at the input size, e.g. `pathnas-edge data synth --n-per-class 1000 --image-size
224` then `pathnas-edge data pack`), the supernet also trains from the pack's loader (memory-mapped reads
in --workers processes, augmentation of each batch on the device): its images/s over the in-memory
figure is what the data path costs (goal on a GPU: >= 0.8).
The ratio supernet / fixed path is the cost of weight sharing (goal on a GPU: >= 0.8; the supernet
samples smaller paths on average, so a ratio above 1 is possible). Timing follows the warm-up steps
and, on CUDA, ends with a synchronisation. Evaluation: extract a path, recalibrate its BN statistics
on `--bn-images` images, evaluate it; images/s counts every image through the network.
Defaults: the paper's space at 224 px on CUDA, the CPU-sized demo knobs on a CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pathnas.data import build_loaders
from pathnas.deploy.machine import cpu_model
from pathnas.spaces import build_supernet, space_config
from pathnas.train import OptimConfig, build_training, evaluate, path_generator, recalibrate_bn, train_epoch
from pathnas.train.distributed import DistContext, resolve_device


def largest_path(net):
    return net.space.from_values([d.values[-1] for d in net.space.decisions])


def batches(n: int, batch_size: int, shape: tuple[int, ...], num_classes: int, device, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, *shape, generator=gen).to(device),
             torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)) for _ in range(n)]


def images_per_s(model_forward, parameters_of, data, cfg: OptimConfig, ctx: DistContext, warmup: int,
                 steps: int | None = None) -> float:
    """Training images/s over in-memory batches (a list), or over ``steps`` steps of a loader."""
    parts = build_training(parameters_of, "classify", NUM_CLASSES, cfg, steps or len(data), ctx.device)
    parts.steps_per_epoch = warmup
    train_epoch(model_forward, data if steps else data[:warmup], parts, 0, ctx)  # kernels chosen, caches filled
    parts.steps_per_epoch = steps or len(data) - warmup
    return train_epoch(model_forward, data if steps else data[warmup:], parts, 1, ctx)["train_images_per_s"]


NUM_CLASSES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--space", default="shufflenet", choices=["shufflenet", "vit"])
    parser.add_argument("--input-size", type=int, default=None, help="default: 224 on CUDA, 64 on a CPU")
    parser.add_argument("--width-mult", type=float, default=None, help="default: 1.0 on CUDA, 0.5 on a CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 32 on a CPU")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--paths", type=int, default=5, help="paths evaluated")
    parser.add_argument("--bn-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pack", default=None, help="also train from this pack (`pathnas-edge data pack`)")
    parser.add_argument("--workers", type=int, default=8, help="loader processes reading the pack")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    size = args.input_size or (224 if cuda else 64)
    width = args.width_mult or (1.0 if cuda else 0.5)
    batch_size = args.batch_size or (128 if cuda else 32)
    knobs = dict(input_size=size, width_mult=width, num_classes=NUM_CLASSES)
    if args.space == "shufflenet" and not cuda:
        knobs["stage_repeats"] = [1, 1, 2, 1]  # the CPU demo's depth
    net = build_supernet(space_config(args.space, **knobs)).to(device)
    ctx = DistContext(0, 1, 0, device)
    cfg = OptimConfig(epochs=1, batch_size=batch_size, lr=0.1, mixup_alpha=0, cutmix_alpha=0)
    data = batches(args.warmup_steps + args.steps, batch_size, (3, size, size), NUM_CLASSES, device)

    net.train()
    supernet_ips = images_per_s(lambda x, step: net(x, net.sample(path_generator(0, 0, step))), net, data, cfg, ctx,
                                args.warmup_steps)
    pack_ips = None
    if args.pack:
        loader = build_loaders(args.pack, size, batch_size, workers=args.workers).train
        if len(loader) < args.steps:
            sys.exit(f"error: {args.pack}: {len(loader)} training batches of {batch_size}, --steps {args.steps} needs "
                     f"more; pack a larger data set")
        pack_ips = images_per_s(lambda x, step: net(x, net.sample(path_generator(0, 0, step))), net, loader, cfg, ctx,
                                args.warmup_steps, args.steps)
    biggest = largest_path(net)
    fixed = net.extract(biggest).to(device).train()
    fixed_ips = images_per_s(lambda x, _step: fixed(x), fixed, data, cfg, ctx, args.warmup_steps)

    eval_data = batches(max(1, args.bn_images // batch_size) + 2, batch_size, (3, size, size), NUM_CLASSES, device, 1)
    gen = torch.Generator().manual_seed(1)
    images = 0
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.paths):
        subnet = net.extract(net.sample(gen)).to(device)
        images += recalibrate_bn(subnet, eval_data[:-2], args.bn_images, device)
        evaluate(subnet, eval_data[-2:], "classify", NUM_CLASSES, device)
        images += 2 * batch_size
    if cuda:
        torch.cuda.synchronize(device)
    eval_seconds = time.perf_counter() - start

    result = {
        "space": args.space, "input_size": size, "width_mult": width, "batch_size": batch_size,
        "device": torch.cuda.get_device_name(device) if cuda else f"{cpu_model()} ({args.threads} threads)",
        "amp": str(build_training(fixed, "classify", NUM_CLASSES, cfg, 1, device).amp_dtype),
        "torch": torch.__version__, "train_steps_timed": args.steps,
        "supernet_images_per_s": round(supernet_ips, 1), "largest_path": biggest.code,
        "fixed_path_images_per_s": round(fixed_ips, 1), "supernet_over_fixed": round(supernet_ips / fixed_ips, 3),
        "pack_images_per_s": round(pack_ips, 1) if pack_ips else None,
        "pack_over_in_memory": round(pack_ips / supernet_ips, 3) if pack_ips else None,
        "eval_paths": args.paths, "bn_images_per_path": args.bn_images,
        "eval_images_per_s": round(images / eval_seconds, 1), "eval_seconds_per_path": round(eval_seconds / args.paths, 3),
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"# {result['device']}, torch {torch.__version__}, AMP {result['amp']}")
    print(f"# {args.space}: input {size}, width x{width}, batch {batch_size}, {args.steps} timed steps")
    print("| measurement | value |\n|---|---|")
    print(f"| supernet training (SPOS, a path per step) | {result['supernet_images_per_s']} images/s |")
    if pack_ips:
        print(f"| supernet training from the pack ({args.workers} workers) | {result['pack_images_per_s']} images/s |")
        print(f"| pack / in-memory batches | {result['pack_over_in_memory']} |")
    print(f"| largest single path, fixed ({biggest.code}) | {result['fixed_path_images_per_s']} images/s |")
    print(f"| supernet / fixed path | {result['supernet_over_fixed']} |")
    print(f"| subnet evaluation incl. BN recalibration ({args.bn_images} images) | {result['eval_images_per_s']} images/s |")
    print(f"| seconds per evaluated path | {result['eval_seconds_per_path']} s |")


if __name__ == "__main__":
    main()
