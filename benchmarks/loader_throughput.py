"""Images per second of the training data path alone, per CPU core, at 224 px: today's image folder
(PNG decode and torchvision v2 augmentation per image) against a pack (`pathnas-edge data pack`: one
slice of a memory-mapped uint8 array per batch, augmentation of the whole batch by BatchAugment, which
runs on the GPU in training and here on the CPU).

    python benchmarks/loader_throughput.py [--images-per-class 64] [--size 224] [--batch-size 64]
                                           [--repeats 3] [--work DIR] [--json]

Everything runs in one process with one torch thread and no loader workers, so each figure is what one
core delivers (loader workers multiply it by the cores given to them). A row for JPEG decoding alone
shows what a tar shard of JPEG tiles (WebDataset) would cost per image before any augmentation: the
measurement behind storing decoded tiles. Each figure is the best of --repeats passes over the
training split; the load average is printed, since other processes on the machine lower every row.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from pathnas.data import build_loaders, generate, load_or_create_splits
from pathnas.data.shards import pack


def images_per_s(batches, repeats: int, work=lambda x, y: None) -> float:
    """Best images/s over ``repeats`` passes of ``batches()`` (a fresh iterator each time)."""
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        for x, y in batches():
            work(x, y)
            count += x.shape[0]
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep the data set and its pack here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="loader-throughput-") as tmp:
            run(args, Path(tmp))
    else:
        run(args, args.work)


def run(args, work: Path) -> None:
    torch.set_num_threads(1)  # one core: the figures are per core
    folder, packed = work / "folder", work / "pack"
    if not (folder / "dataset.json").exists():
        generate(folder, "classify", n_per_class=args.images_per_class, image_size=args.size, seed=0)
    load_or_create_splits(folder)
    pack(folder, packed, size=args.size)
    today = build_loaders(folder, args.size, args.batch_size, workers=0)
    new = build_loaders(packed, args.size, args.batch_size, workers=0)
    augment = new.train.dataset.device_transform
    rows = {}
    rows["image folder: PNG decode + v2 per image (today)"] = images_per_s(lambda: today.train, args.repeats)
    plain = build_loaders(folder, args.size, args.batch_size, workers=0).train.dataset
    plain.transform = v2.Compose([v2.ToDtype(torch.uint8)])  # decoding alone, no augmentation
    rows["image folder: PNG decode alone"] = images_per_s(
        lambda: DataLoader(plain, batch_size=args.batch_size), args.repeats)
    jpegs = []
    for path, label in plain.samples:  # the same tiles as JPEG bytes in memory: a tar shard's members
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
        jpegs.append((buffer.getvalue(), label))

    def jpeg_batches():
        for i in range(0, len(jpegs), args.batch_size):
            chunk = jpegs[i:i + args.batch_size]
            x = torch.stack([v2.functional.pil_to_tensor(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in chunk])
            yield x, torch.tensor([label for _, label in chunk])

    rows["JPEG tiles (a WebDataset shard): decode alone"] = images_per_s(jpeg_batches, args.repeats)
    rows["pack: memory-mapped read alone (new)"] = images_per_s(lambda: new.train, args.repeats)
    steps = iter(range(10**9))
    rows["pack: read + BatchAugment on this CPU (new)"] = images_per_s(
        lambda: new.train, args.repeats, lambda x, y: augment(x, y, 0, next(steps)))
    baseline = rows["image folder: PNG decode + v2 per image (today)"]
    load = os.getloadavg()[0]
    if args.json:
        json.dump({"size": args.size, "batch_size": args.batch_size, "train_images": len(plain),
                   "load_average_1min": load, "images_per_s_per_core": rows}, sys.stdout, indent=2)
        print()
        return
    print(f"# {len(plain)} training images, {args.size} px, batches of {args.batch_size}; one core "
          f"(1 torch thread, no workers); load average {load:.1f}")
    print(f"| {'data path':<48} | img/s/core | vs today |")
    print(f"|{'-' * 50}|------------|----------|")
    for name, value in rows.items():
        print(f"| {name:<48} | {value:10.0f} | {value / baseline:7.1f}x |")


if __name__ == "__main__":
    main()
