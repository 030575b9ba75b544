"""`pathnas-infer`: the workstation toolkit, torch-free.

  pathnas-infer BUNDLE INPUTS... --out results.csv     classify or segment images and slides
  pathnas-infer summary OUT                            merge the per-slide records of OUT (any number of
                                                       workers) into results.csv and run_metadata.json
  pathnas-infer verify BUNDLE                          check every file (and the signature) of a bundle
  pathnas-infer regress BUNDLE [--baseline F] [--same-model] [--junit F]
                                                       latency regression check on this machine, against
                                                       the bundle's baseline or another (the last release's)
  pathnas-infer profile PACK --out TIMINGS             time a latency pack on this device (for
                                                       `pathnas-edge profile assemble`)
  pathnas-infer report OUT [--out FILE]                the batch in OUT as one HTML file (OUT/report.html;
                                                       every batch also writes it at its end)

Every command takes --trusted-key PUB (repeatable; or $PATHNAS_TRUSTED_KEYS, or the folder
/etc/pathnas-edge/trusted-keys): then only bundles signed by one of those keys are accepted.

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

from .regress_check import RegressCheck

EXIT_FAILED = 1  # a bundle that does not verify, a latency regression, an input that failed
COMMANDS = ("verify", "regress", "predict", "profile", "report", "summary")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pathnas-edge")
    except metadata.PackageNotFoundError:
        return "unknown"


def verify_bundle(bundle: Path, as_json: bool = False, trusted_keys: list[Path] | None = None) -> int:
    """Print what is wrong with a bundle (or OK, and what its signature says); the exit code: 0 verified, 1 not."""
    from .manifest import verification_problems
    from .signing import load_trusted_keys

    problems, signature = verification_problems(Path(bundle), load_trusted_keys(trusted_keys or ()))
    if as_json:
        print(json.dumps({"bundle": str(bundle), "verified": not problems, "problems": problems,
                          "signature": signature.status if signature else None,
                          "signed_by": signature.key if signature else None}, indent=2))
    elif problems:
        for problem in problems:
            print(f"FAIL {problem}", file=sys.stderr)
    else:
        print(f"OK {bundle}: every file matches its manifest; {signature.text}")
    return EXIT_FAILED if problems else 0


def regress_bundle(bundle: Path, check: RegressCheck, as_json: bool = False,
                   trusted_keys: list[Path] | None = None) -> int:
    """Time the bundle's model here against its baseline and print the verdict; the exit code: 0 passed, 1 regressed.

    The baseline is the signed manifest's (the packager's) unless ``check.baseline`` names a file: the
    previous release's (a baseline of another model is compared, and the verdict says whose it is;
    ``check.same_model`` refuses it) or one this workstation measured with ``check.update_baseline``
    (written to ``check.baseline``, or beside the bundle). ``check.junit`` gets a report whatever
    happens, an error case when the check cannot run.
    """
    from .junit import junit_on_error
    from .regress import check_bundle, measure_bundle_baseline
    from .signing import load_trusted_keys

    bundle = Path(bundle)
    with junit_on_error(None if check.update_baseline else check.junit, bundle.name):
        trusted = load_trusted_keys(trusted_keys or ())
        if check.update_baseline:
            measured, path = measure_bundle_baseline(bundle, check, trusted)
            print(f"baseline written to {path}: median {measured['median_ms']:.3f} ms; check against it with "
                  f"`pathnas-infer regress {bundle} --baseline {path}` (the bundle's own baseline is unchanged)")
            return 0
        start = time.perf_counter()
        verdict, settings = check_bundle(bundle, check, trusted)
    return report_verdict(verdict, {"bundle": str(bundle), "device": settings.name}, f"{bundle.name}@{settings.name}",
                          check.junit, time.perf_counter() - start, as_json)


def regress_model(model: Path, settings, reference: Path | None, check: RegressCheck, as_json: bool = False) -> int:
    """The same check of a bare model file (.onnx, OpenVINO .xml) against the baseline file ``check.baseline``,
    timed with ``settings`` (deploy/device.py:DeviceSettings, e.g. a hardware profile's) beside the
    ``reference`` model; with ``check.update_baseline``, measure and write that file instead. The exit code
    as above."""
    from pathnas.errors import MissingFileError
    from pathnas.io import read_json

    from .junit import junit_on_error
    from .regress import check_regression, measure_baseline, save_baseline

    model = Path(model)
    with junit_on_error(None if check.update_baseline else check.junit, model.name):
        if not model.is_file():
            raise MissingFileError(f"model {model} does not exist")
        if check.update_baseline:
            fresh = measure_baseline(model, settings, reference, check.rounds)
            save_baseline(check.baseline, fresh)
            print(f"baseline written to {check.baseline}: median {fresh['median_ms']:.3f} ms")
            return 0
        start = time.perf_counter()
        stored = read_json(check.baseline, "latency baseline", "measure one on this device with --update-baseline")
        verdict = check_regression(model, settings, stored, check, str(check.baseline), reference)
    return report_verdict(verdict, {"model": str(model), "device": settings.name}, f"{model.name}@{settings.name}",
                          check.junit, time.perf_counter() - start, as_json)


def report_verdict(verdict, subject: dict, name: str, junit: Path | None, seconds: float, as_json: bool) -> int:
    """The verdict printed (a line, or JSON with ``subject``) and in the JUnit file; the exit code."""
    from .junit import write_result

    if junit:
        write_result(junit, name, verdict.passed, verdict.summary(), seconds, verdict.junit_properties())
    print(json.dumps({**subject, **verdict.as_dict()}, indent=2) if as_json else verdict.summary())
    return 0 if verdict.passed else EXIT_FAILED


def _report(out: Path, path: Path | None = None) -> None:
    from .slide_report import write_batch_report

    written = write_batch_report(out, path)
    print(f"report {written} ({written.stat().st_size / 1e6:.2f} MB): open it in a browser", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    from .infer import add_arguments, add_trust_argument

    top = argparse.ArgumentParser(prog="pathnas-infer", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"pathnas-infer {_version()}")
    commands = top.add_subparsers(dest="command", metavar="{predict,summary,verify,regress,profile,report}")
    predict = commands.add_parser("predict", help="classify or segment images and slides (the default command)")
    add_arguments(predict)
    summary = commands.add_parser("summary", help="merge an output folder's per-slide records (written by any number "
                                                  "of workers) into its results file and run_metadata.json")
    summary.add_argument("out", type=Path, help="the --out the workers were given (a folder, or a .csv/.json file)")
    summary.add_argument("--json", action="store_true")
    verify = commands.add_parser("verify", help="check the manifest, every file's SHA-256 and the signature")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--json", action="store_true")
    add_trust_argument(verify)
    regress = commands.add_parser("regress", help="is the bundle's model slower here than its baseline?")
    regress.add_argument("bundle", type=Path)
    RegressCheck.add_arguments(regress)
    regress.add_argument("--json", action="store_true")
    add_trust_argument(regress)
    from .device_profile import add_arguments as add_profile_arguments

    profile = commands.add_parser("profile", help="time a latency pack here (the device half of `pathnas-edge "
                                                  "profile measure`)")
    add_profile_arguments(profile)
    report = commands.add_parser("report", help="a slide batch's output folder as one HTML file people look at")
    report.add_argument("out", type=Path, help="the --out folder of a `pathnas-infer` run")
    report.add_argument("--out", dest="file", type=Path, default=None, help="where to write it (default: OUT/report.html)")
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
    if args.command == "regress":
        try:
            check = RegressCheck.from_arguments(args)
        except UserError as err:
            if args.junit and not args.update_baseline:
                from .junit import write_error

                write_error(args.junit, Path(args.bundle).name, str(err))
            cli.error(str(err))
    try:
        if args.command == "predict":
            from .infer import results_path, run

            code = run(args)
            _report(results_path(args.out)[1])
        elif args.command == "report":
            _report(args.out, args.file)
            code = 0
        elif args.command == "verify":
            code = verify_bundle(args.bundle, args.json, args.trusted_key)
        elif args.command == "summary":
            from .summary import run_summary

            code = run_summary(args.out, args.json)
        elif args.command == "profile":
            from .device_profile import run as time_a_pack

            code = time_a_pack(args)
        else:
            code = regress_bundle(args.bundle, check, args.json, args.trusted_key)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was left half-written; run the command again", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
