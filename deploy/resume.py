"""Slides already done: skipped when a folder is run again with the same bundle and settings. Torch-free.

After every output of an input is in place, a record ``done/<name>.json`` is written (last,
atomically) with the key of what produced them and the input's result row. A run killed at
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


def done_row(out_dir: Path, name: str, key: str, outputs: tuple[str, ...]) -> dict | None:
    """The row of an input done before under the same key whose outputs are all still there, else None."""
    path = _record(out_dir, name)
    if not path.is_file():
        return None
    try:
        record = read_json(path, "done record")
    except UserError:  # unreadable: do the input again
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    row = record.get("row")
    if not isinstance(row, dict) or row.get("status") != "ok":
        return None
    if not all(isinstance(row[field], str) and Path(row[field]).is_file() for field in outputs if row.get(field)):
        return None
    return row


def mark_done(out_dir: Path, name: str, key: str, row: dict) -> None:
    write_json_atomic(_record(out_dir, name), {"key": key, "row": row})
