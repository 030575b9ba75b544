"""`pathnas-infer`: the workstation toolkit, torch-free.

  pathnas-infer BUNDLE INPUTS... --out results.csv     classify or segment images and slides
  pathnas-infer verify BUNDLE                          check every file of a bundle
  pathnas-infer regress BUNDLE [--baseline F] [--junit F]
                                                       latency regression check on this machine

Imports numpy, Pillow, tifffile and the runtimes only (a test runs every command with torch
blocked). A problem the user can fix prints one `error:` line and exits 2; a bundle that
does not verify or a model that regressed exits 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pathnas.errors import UserError

EXIT_FAILED = 1  # a bundle that does not verify, a latency regression, an input that failed
COMMANDS = ("verify", "regress", "predict")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pathnas-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def verify_bundle(bundle: Path, as_json: bool = False) -> int:
    """Print what is wrong with a bundle (or OK); the exit code: 0 verified, 1 not."""
    from .manifest import verification_problems

    problems = verification_problems(Path(bundle))
    if as_json:
        print(json.dumps({"bundle": str(bundle), "verified": not problems, "problems": problems}, indent=2))
    elif problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
    else:
        print(f"OK {bundle}: every file matches its manifest")
    return EXIT_FAILED if problems else 0


def regress_bundle(bundle: Path, baseline: Path | None = None, tolerance: float = 0.10, confidence: float = 0.95,
                   rounds: int = 5, junit: Path | None = None, update_baseline: bool = False,
                   as_json: bool = False) -> int:
    """Time the bundle's model here against its baseline and print the verdict; the exit code: 0 passed, 1 regressed."""
    from .regress import MANIFEST, check_bundle, measure_bundle_baseline, write_junit

    bundle = Path(bundle)
    if update_baseline:
        measured = measure_bundle_baseline(bundle, rounds)
        print(f"baseline written to {bundle / MANIFEST}: median {measured['median_ms']:.3f} ms")
        return 0
    start = time.perf_counter()
    verdict, settings = check_bundle(bundle, tolerance, confidence, rounds, baseline)
    if junit:
        write_junit(junit, f"{bundle.name}@{settings.name}", verdict, time.perf_counter() - start)
    print(json.dumps({"bundle": str(bundle), "device": settings.name, **verdict.as_dict()}, indent=2)
          if as_json else verdict.summary())
    return 0 if verdict.passed else EXIT_FAILED


def parser() -> argparse.ArgumentParser:
    from .infer import add_arguments

    top = argparse.ArgumentParser(prog="pathnas-infer", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"pathnas-infer {_version()}")
    commands = top.add_subparsers(dest="command", metavar="{predict,verify,regress}")
    predict = commands.add_parser("predict", help="classify or segment images and slides (the default command)")
    add_arguments(predict)
    verify = commands.add_parser("verify", help="check the manifest and every file's SHA-256")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--json", action="store_true")
    regress = commands.add_parser("regress", help="is the bundle's model slower here than its baseline?")
    regress.add_argument("bundle", type=Path)
    regress.add_argument("--baseline", type=Path, default=None, help="baseline JSON (default: the manifest's)")
    regress.add_argument("--tolerance", type=float, default=0.10, help="allowed slowdown, 0.10 = 10%%")
    regress.add_argument("--confidence", type=float, default=0.95)
    regress.add_argument("--rounds", type=int, default=5, help="timing rounds (20 samples each)")
    regress.add_argument("--junit", type=Path, default=None, help="write a JUnit XML report here")
    regress.add_argument("--update-baseline", action="store_true", help="measure here and (over)write the baseline")
    regress.add_argument("--json", action="store_true")
    return top


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `pathnas-infer BUNDLE INPUTS...` is short for `pathnas-infer predict BUNDLE INPUTS...`.
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "predict")
    cli = parser()
    args = cli.parse_args(argv)
    if args.command is None:
        cli.print_usage(sys.stderr)
        raise SystemExit(2)
    if args.command == "predict":
        from .infer import check_arguments

        check_arguments(cli, args)
    if args.command == "regress" and (args.tolerance < 0 or not 0.5 <= args.confidence < 1 or args.rounds < 1):
        cli.error("--tolerance must be >= 0, --confidence in [0.5, 1), --rounds >= 1")
    try:
        if args.command == "predict":
            from .infer import run

            code = run(args)
        elif args.command == "verify":
            code = verify_bundle(args.bundle, args.json)
        else:
            code = regress_bundle(args.bundle, args.baseline, args.tolerance, args.confidence, args.rounds, args.junit,
                                  args.update_baseline, args.json)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        if args.command == "regress" and getattr(args, "junit", None):
            from .regress import write_junit_error

            write_junit_error(args.junit, Path(args.bundle).name, str(err))
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was left half-written; run the command again", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
