"""Slide inference against the model's own speed: is reading the slide the limit, or the model?

    python benchmarks/slide_throughput.py [--threads 1,2] [--batch-size 8] [--reader-threads N]
                                          [--models paper,small] [--side 6720] [--passes 5] [--big] [--json]
    python benchmarks/slide_throughput.py --batch-sweep 1,4,8,16 [--runtimes onnxruntime,openvino]
    python benchmarks/slide_throughput.py --read-costs [--side 3360]

For the paper's ShuffleNet (width 1.0, 224 px input, a fixed mixed-kernel path, untrained
weights: speed does not depend on them) and a small one (width 0.5), exported to ONNX through
the toolchain's exporter and run in ONNX Runtime on this CPU:
- pure inference: tiles/s of ``Model.predict`` on in-memory batches of real preprocessed tiles;
- slide: tiles/s of the product's slide path (``SlideBatch.tiled``: reading JPEG tiles of a
  synthetic scanner TIFF, tissue detection, preprocessing, inference, the per-tile CSV, WSInfer
  CSV, GeoJSON and heatmap) with the reader threads ahead of the model, and with
  ``--reader-threads 0`` (reading and inference in turns), same threads and batch size;
- the ratio slide / pure (the design's limit is 1.0; the goal is >= 0.9). In one process, pure
  inference and the slide alternate (``--passes`` slides, a pure run before and after each) and
  each slide is compared with the pure runs beside it, since the machine's speed wanders; the
  table gives the median and the range over the passes;
- peak resident memory of one pass over the slide and over a slide of 4x the area, each in a process
  of its own (flat: the same within 10 %);
- with ``--big``: seconds for a slide of 200 x 200 = 40,000 tissue tiles of 224 px, beside
  H2G-Net's published ~58 s per slide on a CPU (a different model and pipeline).
Every measurement runs in its own torch-free process, so a process's peak memory is that slide's.
``--batch-sweep`` prints pure inference tiles/s of both models at each batch size in each runtime
(interleaved, best of 3 passes): the figure behind a profile's ``slide_batch_size``.
``--read-costs`` prints the reading side's CPU time per tile in one thread (reading and decoding,
tissue detection, preprocessing; best of 3 passes over the slide), beside each model's inference CPU
time per tile (threads x seconds per tile): on a machine whose cores are all busy with both, the
ratio slide / pure cannot pass inference / (inference + reading).
Tiles of 224 px at level 0 (no resolution stated: read as they are), no overlap, all tissue.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_ARCH = "35753575357535753575"
MODELS = {"paper": dict(width_mult=1.0), "small": dict(width_mult=0.5)}
SIZE = 224
H2G_NET_CPU_S = 58  # H2G-Net's reported seconds per whole slide on a CPU (their paper)


def export_model(name: str, out: Path) -> Path:
    """The ShuffleNet path of the paper's space at 224 px, exported to ONNX (torch, in the parent only)."""
    from pathnas.onnx import export_onnx
    from pathnas.spaces import build_supernet, space_config

    net = build_supernet(space_config("shufflenet", input_size=SIZE, num_classes=4, **MODELS[name])).eval()
    path = out / f"{name}.onnx"
    export_onnx(net.extract(PAPER_ARCH).eval(), path, (1, 3, SIZE, SIZE))
    return path


def child(args) -> None:
    """One measurement in a fresh process: pure inference and the slide in turns, pure inference last."""
    import numpy as np

    from pathnas.deploy.images import open_image
    from pathnas.deploy.infer import Model, SlideBatch, open_model_runner, plan_reading

    pre = {"input_size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255,
           "mpp": None, "image_px": SIZE}
    model = Model(open_model_runner(args.model, "onnxruntime", args.threads), pre, ["a", "b", "c", "d"], "classify")
    source = open_image(args.slide)
    tiles = model.preprocess([source.read_region(y * SIZE, x * SIZE, SIZE, SIZE)
                              for y in range(2) for x in range(args.batch_size // 2 + 1)])[:args.batch_size]

    def pure() -> float:
        for _ in range(3):
            model.predict(tiles)
        n = max(4, args.pure_tiles // args.batch_size)
        start = time.perf_counter()
        for _ in range(n):
            model.predict(tiles)
        return n * args.batch_size / (time.perf_counter() - start)

    run_args = argparse.Namespace(batch_size=args.batch_size, reader_threads=args.reader_threads, tile_overlap=0.0,
                                  min_tissue=0.2, heatmap_size=512, tile_dir=args.out / "tiles",
                                  mask_dir=args.out / "masks")
    runner = SlideBatch(model, run_args, args.out)
    plan = plan_reading(source, None, SIZE)
    # pure, slide, pure, slide, ..., pure: each slide is compared with the pure runs just before and after
    # it, so a machine whose speed wanders (this VM's pure inference: 316-473 tiles/s minutes apart)
    # moves both sides of a ratio alike.
    pures, slides, seconds = [pure()], [], []
    for _ in range(args.passes):
        start = time.perf_counter()
        row = runner.tiled(Path(args.slide), source, plan)
        seconds.append(time.perf_counter() - start)
        slides.append(row["tissue_tiles"] / seconds[-1])
        pures.append(pure())
    ratios = [s / ((a + b) / 2) for s, a, b in zip(slides, pures, pures[1:])]
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak (torch loaded) into an exec'd child's
    peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
    print(json.dumps({"tiles": row["tissue_tiles"], "seconds": min(seconds), "slide_tps": float(np.median(slides)),
                      "pure_tps": float(np.median(pures)), "ratios": ratios, "ratio": float(np.median(ratios)),
                      "peak_mb": peak_kb / 1024}))


def batch_sweep(args) -> None:
    """Pure inference tiles/s per batch size and runtime, each batch size timed in turn within a pass."""
    import tempfile

    import numpy as np

    from pathnas.deploy.infer import open_model_runner

    batches = [int(b) for b in args.batch_sweep.split(",")]
    x = np.random.default_rng(0).standard_normal((max(batches), 3, SIZE, SIZE), dtype=np.float32)
    print(f"# pure inference tiles/s, {SIZE} px, {args.threads} threads, best of 3 passes")
    print("| model | runtime | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|---|" + "---:|" * len(batches))
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            path = export_model(name, Path(tmp))
            for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
                runner = open_model_runner(path, runtime, args.threads)
                best = {b: 0.0 for b in batches}
                for _ in range(3):
                    for b in batches:
                        for _ in range(2):
                            runner.run(x[:b])
                        calls = max(4, args.pure_tiles // b)
                        start = time.perf_counter()
                        for _ in range(calls):
                            runner.run(x[:b])
                        best[b] = max(best[b], calls * b / (time.perf_counter() - start))
                runner.close()
                print(f"| {name} | {runtime} | " + " | ".join(f"{best[b]:.0f}" for b in batches) + " |")


def read_costs(args) -> None:
    """The reading side's CPU ms per tile, one thread, against each model's inference CPU ms per tile."""
    import tempfile

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bundle_helpers import write_slide
    from pathnas.deploy.images import open_image, tile_grid, tissue_fraction
    from pathnas.deploy.infer import Model, open_model_runner

    pre = {"input_size": SIZE, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255,
           "mpp": None, "image_px": SIZE}
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_slide(Path(tmp) / "slide.tif", side=args.side, tile=256, tissue=1.0, compression="jpeg")
        source = open_image(slide)
        grid = list(tile_grid(source.height, source.width, SIZE, 0.0, getattr(source, "block", None)))
        source.close()
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        models = {n: Model(open_model_runner(export_model(n, Path(tmp)), "onnxruntime", args.threads), pre,
                           ["a", "b", "c", "d"], "classify") for n in names}
        best = {"read and decode": np.inf, "tissue detection": np.inf, "preprocess": np.inf}
        for _ in range(3):
            reader = open_image(slide)  # a cold segment cache every pass
            start = time.process_time()
            regions = [reader.read_region(y, x, SIZE, SIZE) for y, x in grid]
            best["read and decode"] = min(best["read and decode"], time.process_time() - start)
            start = time.process_time()
            for region in regions:
                tissue_fraction(region)
            best["tissue detection"] = min(best["tissue detection"], time.process_time() - start)
            start = time.process_time()
            batch = models[names[0]].preprocess(regions)
            best["preprocess"] = min(best["preprocess"], time.process_time() - start)
        inference = {}
        for name, model in models.items():
            chunk = batch[:args.batch_size]
            model.predict(chunk)
            start = time.process_time()
            for _ in range(max(2, args.pure_tiles // len(chunk))):
                model.predict(chunk)
            inference[name] = (time.process_time() - start) / (max(2, args.pure_tiles // len(chunk)) * len(chunk))
    reading = sum(best.values()) / len(grid)
    print(f"# CPU ms per tile, {SIZE} px, {len(grid)} tiles of a JPEG slide; reading in one thread; inference at "
          f"batch {args.batch_size}, {args.threads} threads (process CPU time)")
    print("| step | CPU ms per tile |\n|---|---:|")
    for step, seconds in best.items():
        print(f"| {step} | {seconds / len(grid) * 1e3:.3f} |")
    print(f"| reading side, all | {reading * 1e3:.3f} |")
    for name, seconds in inference.items():
        print(f"| inference, {name} | {seconds * 1e3:.3f} (bound on slide / pure with every core busy: "
              f"{seconds / (seconds + reading):.2f}) |")


def measure(model: Path, slide: Path, args, reader_threads: int, out: Path, passes: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--slide", str(slide), "--out", str(out),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--reader-threads", str(reader_threads), "--pure-tiles", str(args.pure_tiles), "--passes", str(passes)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"measurement failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="model threads; comma-separated: a row per count (the first "
                                                    "count for --batch-sweep and --read-costs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reader-threads", type=int, default=None,
                   help="default: 1 beside a 1-thread model (a core each on 2 cores), 2 beside more")
    p.add_argument("--models", default="paper,small")
    p.add_argument("--side", type=int, default=SIZE * 30, help="slide side in px (default 30 x 30 tiles of 224)")
    p.add_argument("--pure-tiles", type=int, default=400)
    p.add_argument("--passes", type=int, default=5, help="slide passes, each between two pure inference runs")
    p.add_argument("--big", action="store_true", help="also a slide of 40,000 tissue tiles (200 x 200 of 224 px)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--batch-sweep", default=None, help="comma-separated batch sizes: pure inference only")
    p.add_argument("--runtimes", default="onnxruntime,openvino", help="with --batch-sweep")
    p.add_argument("--read-costs", action="store_true", help="CPU ms per tile of reading and of inference")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    args.threads = thread_counts[0]
    if args.child:
        return child(args)
    if args.batch_sweep:
        return batch_sweep(args)
    if args.read_costs:
        return read_costs(args)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bundle_helpers import write_slide
    from pathnas.deploy.machine import cpu_model

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slides = {"1x": write_slide(tmp / "slide.tif", side=args.side, tile=256, tissue=1.0, compression="jpeg"),
                  "4x": write_slide(tmp / "slide4.tif", side=2 * args.side, tile=256, tissue=1.0, compression="jpeg")}
        if args.big:
            slides["40k"] = write_slide(tmp / "big.tif", side=200 * SIZE, tile=256, tissue=1.0, compression="jpeg")
        models = {name: export_model(name, tmp) for name in names}
        for threads, name in ((t, n) for t in thread_counts for n in names):
            model, args.threads = models[name], threads
            readers = args.reader_threads if args.reader_threads is not None else (1 if threads == 1 else 2)
            ahead = measure(model, slides["1x"], args, readers, tmp / f"{name}-ahead", args.passes)
            turns = measure(model, slides["1x"], args, 0, tmp / f"{name}-turns", args.passes)
            # peak memory: one pass of each slide size, each in a process of its own
            once = measure(model, slides["1x"], args, readers, tmp / f"{name}-1x")
            bigger = measure(model, slides["4x"], args, readers, tmp / f"{name}-4x")
            row = {"model": name, "threads": threads, "reader_threads": readers,
                   "pure_tps": ahead["pure_tps"], "slide_tps": ahead["slide_tps"],
                   "ratio": ahead["ratio"], "ratios": ahead["ratios"], "turns_tps": turns["slide_tps"],
                   "turns_ratio": turns["ratio"], "turns_ratios": turns["ratios"], "tiles": ahead["tiles"],
                   "peak_mb": once["peak_mb"], "peak_4x_mb": bigger["peak_mb"], "tiles_4x": bigger["tiles"]}
            if args.big:
                big = measure(model, slides["40k"], args, readers, tmp / f"{name}-40k")
                row.update(big_tiles=big["tiles"], big_s=big["seconds"], big_peak_mb=big["peak_mb"])
            rows.append(row)
    settings = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": thread_counts, "batch_size": args.batch_size,
                "side": args.side}
    if args.json:
        print(json.dumps({"settings": settings, "rows": rows}, indent=2))
        return
    print(f"# slide vs pure inference, {SIZE} px tiles, {settings['cpu']} ({settings['cores']} cores), "
          f"batch {args.batch_size};\n# slide {args.side} px ({rows[0]['tiles'] if rows else 0} tiles); threads: the "
          f"model's, readers: the reader threads beside it")
    print(f"# tiles/s and ratios: medians of {args.passes} slide passes, each against the pure runs before and "
          f"after it\n# (range: the lowest and highest pass); in turns: --reader-threads 0")
    print("| model | threads | readers | pure t/s | slide t/s | ratio (range) | in turns | ratio (range) | MB | MB 4x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        span = {k: f"{min(r[k]):.2f}-{max(r[k]):.2f}" for k in ("ratios", "turns_ratios")}
        print(f"| {r['model']} | {r['threads']} | {r['reader_threads']} | {r['pure_tps']:.0f} | {r['slide_tps']:.0f} "
              f"| {r['ratio']:.2f} ({span['ratios']}) "
              f"| {r['turns_tps']:.0f} | {r['turns_ratio']:.2f} ({span['turns_ratios']}) | {r['peak_mb']:.0f} "
              f"| {r['peak_4x_mb']:.0f} |")
    if args.big:
        print(f"\n# a slide of 40,000 tissue tiles of {SIZE} px (H2G-Net: ~{H2G_NET_CPU_S} s per slide on a CPU)")
        print("| model | threads | tiles | seconds | peak MB |\n|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['threads']} | {r['big_tiles']} | {r['big_s']:.0f} | {r['big_peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
