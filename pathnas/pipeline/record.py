"""Stages of a run directory: skipped when done for the same inputs, resumed after a crash.

Each stage records in RUN/stages.json the SHA-256 of its inputs (files, folders and settings)
and the outputs it wrote. A stage whose recorded inputs match and whose outputs all exist is
skipped; anything else runs again. Since every output is written atomically, a crashed
pipeline simply reruns from the first stage that did not finish.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from pathnas.errors import MissingFileError
from pathnas.io import read_json, sha256_file, write_json_atomic

from .layout import RunLayout

log = logging.getLogger("pathnas.stages")


def content_hash(value: Any) -> str:
    """SHA-256 of a file's bytes, a folder's files (names and bytes), or a JSON-able setting."""
    if isinstance(value, Path):
        if value.is_file():
            return sha256_file(value)
        if not value.is_dir():
            raise MissingFileError(f"stage input {value} does not exist")
        digest = hashlib.sha256()
        for p in sorted(q for q in value.rglob("*") if q.is_file()):
            digest.update(p.relative_to(value).as_posix().encode())
            digest.update(sha256_file(p).encode())
        return digest.hexdigest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _load(layout: RunLayout) -> dict:
    return read_json(layout.stages, "stage record") if layout.stages.exists() else {}


def run_stage(layout: RunLayout, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
              force: bool = False) -> bool:
    """Run ``fn`` unless the stage already finished for these inputs. Returns True if it ran."""
    hashes = {key: content_hash(value) for key, value in inputs.items()}
    record = _load(layout).get(name)
    if not force and record and record["inputs"] == hashes and all(Path(o).exists() for o in outputs):
        log.info("stage %s: up to date, skipped", name)
        return False
    log.info("stage %s: running", name)
    fn()
    missing = [str(o) for o in outputs if not Path(o).exists()]
    if missing:
        raise RuntimeError(f"stage {name} finished without writing {', '.join(missing)}")
    stages = _load(layout)  # re-read: the stage itself may have recorded sub-stages
    stages[name] = {"inputs": hashes, "outputs": [layout.relative(o) for o in outputs],
                    "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(layout.stages, stages)
    return True
