"""Latency regression of a bundle on its target, against the baseline in its manifest.

`pathnas-regress BUNDLE` runs it on a workstation with the runtime install (no PyTorch), for
example after a driver or runtime update; `pathnas-edge regress BUNDLE` runs the same check.
The timing and the noise-aware verdict are pathnas.profiling.regress's; this module only
reads the bundle: it must verify, and it names the model, the profile and the baseline.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pathnas.io import write_json_atomic

from .manifest import MANIFEST, BundleError, verify

EXIT_REGRESSED = 1
EXIT_CANNOT_CHECK = 2


def _bundle_model(bundle: Path, device: str | None):
    from pathnas.profiling import load_profile

    manifest = verify(bundle)
    return manifest, load_profile(device or manifest["profile"]["name"]), Path(bundle) / manifest["model"]["default"]


def check_bundle(bundle: Path, device: str | None = None, tolerance: float = 0.10, confidence: float = 0.95,
                 rounds: int = 5):
    """Verdict of the bundle's default model timed here against its manifest's baseline, and the profile used."""
    from pathnas.profiling.regress import check_regression

    manifest, profile, model = _bundle_model(bundle, device)
    baseline = manifest["latency_baseline"]
    if baseline is None:
        raise FileNotFoundError(f"{Path(bundle) / MANIFEST} has no latency baseline "
                                f"({manifest.get('latency_baseline_note') or 'none was measured'})")
    return check_regression(model, profile, baseline, tolerance, confidence, rounds, str(Path(bundle) / MANIFEST)), profile


def measure_bundle_baseline(bundle: Path, device: str | None = None, rounds: int = 5) -> dict:
    """Measure the bundle's default model here and record it as the manifest's baseline.

    The manifest lists the hashes of the other files and is itself not hashed, so the bundle
    still verifies afterwards.
    """
    from pathnas.profiling.regress import make_baseline, measure_samples

    manifest, profile, model = _bundle_model(bundle, device)
    baseline = make_baseline(model, profile, measure_samples(model, profile, rounds))
    manifest["latency_baseline"], manifest["latency_baseline_note"] = baseline, None
    write_json_atomic(Path(bundle) / MANIFEST, manifest)
    return baseline


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pathnas-regress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="a bundle folder written by `pathnas-edge package`")
    p.add_argument("--device", default=None, help="hardware profile of this machine (default: the bundle's)")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed slowdown, 0.10 = 10%%")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (20 samples each)")
    p.add_argument("--junit", type=Path, default=None, help="write a JUnit XML report here")
    p.add_argument("--update-baseline", action="store_true", help="measure here and (over)write the baseline")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    from pathnas.export.runtimes import ProviderError
    from pathnas.profiling.regress import write_junit

    cli = parser()
    args = cli.parse_args(argv)
    if args.tolerance < 0 or not 0.5 <= args.confidence < 1 or args.rounds < 1:
        cli.error("--tolerance must be >= 0, --confidence in [0.5, 1), --rounds >= 1")
    start = time.perf_counter()
    try:
        if args.update_baseline:
            baseline = measure_bundle_baseline(args.bundle, args.device, args.rounds)
            print(f"baseline written to {args.bundle / MANIFEST}: median {baseline['median_ms']:.3f} ms")
            raise SystemExit(0)
        verdict, profile = check_bundle(args.bundle, args.device, args.tolerance, args.confidence, args.rounds)
    except (BundleError, ProviderError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_CANNOT_CHECK) from None
    if args.junit:
        write_junit(args.junit, f"{args.bundle.name}@{profile.name}", verdict, time.perf_counter() - start)
    print(json.dumps({"bundle": str(args.bundle), "device": profile.name, **verdict.as_dict()}, indent=2)
          if args.json else verdict.summary())
    raise SystemExit(0 if verdict.passed else EXIT_REGRESSED)


if __name__ == "__main__":
    main()
