"""Slides already done: skipped when a folder is run again with the same bundle and settings. Torch-free.

After every output of an input is in place, a record ``done/<name>.json`` is written (last,
atomically) with the key of what produced them, the run (bundle, artifact, settings), the worker
that did it and the input's result row: the per-slide records the folder's results.csv and
run_metadata.json are merged from (summary.py), whichever worker wrote them. A slide that failed
has a record too: a worker of the same batch (one started before the record was written) takes it
as done, a later run tries the slide again. A run killed at
slide 150 left 149 records, so the next run continues at 150 (as WSInfer skips slides whose
outputs exist); a slide half-written when the run died has no record and is done again. The
key covers the bundle (its manifest's SHA-256, which covers every file of it), the model
artifact, every setting that changes an output, and the input file itself (its absolute path,
size and modification time), so changed settings or a replaced slide are never mixed with
old results.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pathnas.errors import UserError
from pathnas.io import read_json, write_json_atomic

DONE = "done"


def run_key(bundle_sha256: str, artifact: str, settings: dict) -> dict:
    """What every input's key shares: the bundle, the model in it and the settings."""
    return {"bundle_sha256": bundle_sha256, "artifact": artifact, "settings": settings}


def input_key(run: dict, path: Path) -> str:
    stat = Path(path).stat()
    ident = {**run, "input": str(Path(path).absolute()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _record(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / DONE / f"{name}.json"


def done_row(out_dir: Path, name: str, key: str, outputs: tuple[str, ...], since: float | None = None,
             final: tuple[str, ...] = ("ok",)) -> dict | None:
    """The row of an input done under the same key whose outputs are all still there, else None.

    A row whose status is not in ``final`` (a failure) counts only when its record was written after
    ``since`` (the worker's start: by another worker of the same batch); with ``redo``, every record
    written before ``since`` is ignored."""
    path = _record(out_dir, name)
    try:
        written = path.stat().st_mtime
        record = read_json(path, "done record")
    except (FileNotFoundError, UserError):  # none, or unreadable: do the input again
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    row = record.get("row")
    if not isinstance(row, dict) or not isinstance(row.get("status"), str):
        return None
    if row["status"] not in final and (since is None or written < since):
        return None
    if not all(isinstance(row[field], str) and Path(row[field]).is_file() for field in outputs if row.get(field)):
        return None
    return row


def written_since(out_dir: Path, name: str, since: float) -> bool:
    """Whether the input's record was written at or after ``since`` (by a worker of this batch)."""
    try:
        return _record(out_dir, name).stat().st_mtime >= since
    except FileNotFoundError:
        return False


def mark_done(out_dir: Path, name: str, key: str, row: dict, run: dict | None = None, worker: str = "") -> None:
    write_json_atomic(_record(out_dir, name), {"key": key, "run": run, "worker": worker, "row": row})


def records(out_dir: Path, names: set[str] | None = None) -> list[dict]:
    """Every readable per-input record of the folder (of the inputs ``names``, when given); an unreadable
    one is left out: its input is done again by the next run."""
    out = []
    for path in sorted((Path(out_dir) / DONE).glob("*.json")):
        if names is not None and path.stem not in names:
            continue
        try:
            record = read_json(path, "done record")
        except UserError:
            continue
        if isinstance(record, dict) and isinstance(record.get("row"), dict):
            out.append(record)
    return out
