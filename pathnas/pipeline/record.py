"""Stages of a run directory: skipped when done for the same inputs, resumed after a crash.

Each stage records in RUN/stages.json the SHA-256 of its inputs (files, folders and settings)
and the outputs it wrote. A stage whose recorded inputs match and whose outputs all exist is
skipped; anything else runs again. Since every output is written atomically, a crashed
pipeline simply reruns from the first stage that did not finish; the temporary files it left
are swept when the stage starts again.

Inputs are hashed so that a run directory can move: files and folders by their content, and
paths inside settings relative to the run directory (or as the name of an input hashed by
content), never as absolute paths. A stage holds the run directory's lock while it runs.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from pathnas.errors import MissingFileError
from pathnas.io import read_json, sha256_file, sweep_temporaries, write_json_atomic
from pathnas.lock import LOCK_NAME, RunLock

from .layout import RunLayout

log = logging.getLogger("pathnas.stages")


def _bookkeeping(path: Path) -> bool:
    """A lock or a temporary file: never part of what a folder holds."""
    return path.name == LOCK_NAME or (path.name.startswith(".") and path.name.endswith(".tmp"))


def content_hash(value: Any) -> str:
    """SHA-256 of a file's bytes, a folder's files (names and bytes), or a JSON-able setting."""
    if isinstance(value, Path):
        if value.is_file():
            return sha256_file(value)
        if not value.is_dir():
            raise MissingFileError(f"stage input {value} does not exist")
        digest = hashlib.sha256()
        for p in sorted(q for q in value.rglob("*") if q.is_file() and not _bookkeeping(q)):
            digest.update(p.relative_to(value).as_posix().encode())
            digest.update(sha256_file(p).encode())
        return digest.hexdigest()
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.absolute()))


def portable(value: Any, root: Path, inputs: dict[str, Path] | None = None) -> Any:
    """``value`` (settings) with its paths made independent of where the run directory and the data lie:
    a path equal to one of ``inputs`` (hashed by their content) becomes ``<input:NAME>``, a path inside
    ``root`` becomes ``<run>/RELATIVE``. Strings count as paths when they hold a separator or exist."""
    inputs = {name: _absolute(p) for name, p in (inputs or {}).items()}
    root = _absolute(root)

    def convert(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: convert(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(v) for v in item]
        if isinstance(item, (str, os.PathLike)) and (os.sep in str(item) or Path(item).exists()):
            path = _absolute(Path(item))
            name = next((n for n, p in inputs.items() if p == path), None)
            if name is not None:
                return f"<input:{name}>"
            if path.is_relative_to(root):
                return f"<run>/{path.relative_to(root).as_posix()}"
        return item

    return convert(value)


def _load(layout: RunLayout) -> dict:
    return read_json(layout.stages, "stage record") if layout.stages.exists() else {}


def run_stage(layout: RunLayout, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
              force: bool = False) -> bool:
    """Run ``fn`` unless the stage already finished for these inputs. Returns True if it ran."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with RunLock(layout.root, name):
        paths = {key: value for key, value in inputs.items() if isinstance(value, Path)}
        hashes = {key: content_hash(value if isinstance(value, Path) else portable(value, layout.root, paths))
                  for key, value in inputs.items()}
        record = _load(layout).get(name)
        if not force and record and record["inputs"] == hashes and all(Path(o).exists() for o in outputs):
            log.info("stage %s: up to date, skipped", name)
            return False
        log.info("stage %s: running", name)
        for folder in {layout.root, *(Path(o).parent for o in outputs)}:
            # Left by a run killed while writing them. A folder with a lock of its own (a supernet or
            # retrain directory) is swept by the command that takes that lock.
            if folder == layout.root or not (folder / LOCK_NAME).exists():
                sweep_temporaries(folder)
        fn()
        missing = [str(o) for o in outputs if not Path(o).exists()]
        if missing:
            raise RuntimeError(f"stage {name} finished without writing {', '.join(missing)}")
        stages = _load(layout)  # re-read: the stage itself may have recorded sub-stages
        stages[name] = {"inputs": hashes, "outputs": [layout.relative(o) for o in outputs],
                        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(layout.stages, stages)
        return True
