"""One account of an output folder however many workers wrote it: results.csv and run_metadata.json. Torch-free.

Each worker keeps its own record, ``workers/<host>-<pid>-<start>.json`` (what it ran: bundle,
signer, runtime, threads, versions, settings; when; how many slides it did), and each slide its
per-slide record (``done/<slide>.json``, resume.py). Nothing a worker writes overwrites another
worker's. The results file and ``run_metadata.json`` are merged from those records at the end of
every worker's run (for the inputs it was given, every shard's: the workers of a batch are given
the same) and by ``pathnas-infer summary OUT`` (for every record in the folder), so the summary is
right whichever worker finished last. Fields that differ between two equal runs are timing and who:
the rows' ``seconds`` and ``tiles_per_s``, and run_metadata's ``workers`` and ``written_at``.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from pathlib import Path

from pathnas.errors import MissingFileError, UserError
from pathnas.io import read_json, write_json_atomic, write_text_atomic

from . import resume
from .claims import CLAIMS

RUN_METADATA = "run_metadata.json"
RUN_SCHEMA = "pathnas-infer-run/2"
WORKERS = "workers"
TIMING_FIELDS = ("seconds", "tiles_per_s")  # of a row: the only fields two equal runs write differently
OK, NO_TISSUE = "ok", "no_tissue"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def results_path(out: str | Path) -> tuple[Path, Path]:
    """(results file, folder of the run's other outputs): ``--out`` names a .csv/.json file, or a folder."""
    out = Path(out)
    if out.suffix.lower() in (".csv", ".json"):
        return out, out.parent
    return out / "results.csv", out


def write_worker(out_dir: Path, ident: str, record: dict) -> None:
    write_json_atomic(Path(out_dir) / WORKERS / f"{ident}.json", record)


def _workers(out_dir: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((Path(out_dir) / WORKERS).glob("*.json")):
        try:
            record = read_json(path, "worker record")
        except UserError:
            continue
        if isinstance(record, dict) and isinstance(record.get("worker"), str):
            found[record["worker"]] = record
    return found


def merge(out_dir: Path, finished: bool, extra: list[dict] | None = None,
          names: set[str] | None = None) -> tuple[list[dict], dict]:
    """The rows (one per input with a record, of the inputs ``names`` or of the whole folder, and the
    ``extra`` rows of inputs that have none, sorted) and run_metadata.json. ``extra`` defaults to the
    latest worker's inputs that could not be listed (a path that does not exist, an empty folder)."""
    out_dir = Path(out_dir)
    records = resume.records(out_dir, names)
    workers = _workers(out_dir)
    made_by = {r.get("worker") for r in records}
    used = sorted((w for ident, w in workers.items() if ident in made_by), key=lambda w: w.get("started_at", ""))
    latest = max(workers.values(), key=lambda w: w.get("started_at", ""), default={})
    newest = used[-1] if used else latest
    recorded = {r["row"].get("input") for r in records}
    extra = latest.get("input_failures") or [] if extra is None else extra
    rows = sorted([r["row"] for r in records] + [r for r in extra if r.get("input") not in recorded],
                  key=lambda row: row.get("input", ""))
    run = newest.get("run") or {}
    other = sorted(r["row"].get("input", "") for r in records if r.get("run") not in (None, run))
    failed = [row for row in rows if row.get("status") != OK]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row.get("status", "?")] = statuses.get(row.get("status", "?"), 0) + 1
    meta = {"schema": RUN_SCHEMA, **(newest.get("meta") or {}), "settings": run.get("settings"),
            "finished": finished, "written_at": now(), "inputs": len(rows), "failed": len(failed),
            "statuses": dict(sorted(statuses.items())),
            "workers": [{k: w.get(k) for k in ("worker", "host", "pid", "started_at", "finished_at", "seconds",
                                                "threads", "reader_threads", "shard", "slides_done",
                                                "skipped_done", "finished")} for w in used],
            "results": rows}
    if other:
        meta["made_with_other_settings"] = other  # records of an earlier run of this folder, kept as they were
    return rows, meta


def _csv(rows: list[dict], first: list[str]) -> str:
    fields = list(dict.fromkeys(first + [k for r in rows for k in r]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_summary(results: Path, out_dir: Path, finished: bool, fmt: str | None = None,
                  extra: list[dict] | None = None, names: set[str] | None = None) -> tuple[list[dict], dict]:
    """Merge the records (of the inputs ``names``, by their output names, else of the whole folder) into
    ``results`` (CSV or JSON, by ``fmt`` or its extension) and run_metadata.json; the rows and the metadata.
    Every worker of a batch is given the same inputs, so each writes the same summary."""
    rows, meta = merge(out_dir, finished, extra, names)
    fmt = fmt or ("json" if Path(results).suffix.lower() == ".json" else "csv")
    if fmt == "json":
        write_text_atomic(results, json.dumps({"bundle": meta.get("bundle"), "signature": meta.get("signature_text"),
                                               "model": meta.get("model"), "results": rows}, indent=2))
    else:
        classes = meta.get("classes") or []
        first = ["input", "status", "error", "note", "prediction"] + [f"prob_{c}" for c in classes]
        write_text_atomic(results, _csv(rows, first))
    write_json_atomic(Path(out_dir) / RUN_METADATA, meta)
    return rows, meta


def run_summary(out: Path, as_json: bool = False) -> int:
    """`pathnas-infer summary OUT`: merge the folder's records; 0 when every slide is ok, 1 otherwise."""
    results, out_dir = results_path(out)
    if not (out_dir / resume.DONE).is_dir() and not (out_dir / WORKERS).is_dir():
        raise MissingFileError(f"{out_dir}: holds no per-slide records (done/) of a pathnas-infer run")
    live = sorted(p.name for p in (out_dir / CLAIMS).glob("*.claim")) if (out_dir / CLAIMS).is_dir() else []
    rows, meta = write_summary(results, out_dir, finished=not live)
    if as_json:
        print(json.dumps({k: v for k, v in meta.items() if k != "results"}, indent=2))
    else:
        counts = ", ".join(f"{n} {s}" for s, n in meta["statuses"].items()) or "none"
        print(f"{len(rows)} input(s): {counts}; results in {results}, run record in {out_dir / RUN_METADATA}")
        if live:
            print(f"{len(live)} slide(s) claimed by a worker (running, or killed: a worker started again takes "
                  f"them over): not finished", file=sys.stderr)
    return 1 if meta["failed"] or live else 0
