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

from .io import write_json_atomic

log = logging.getLogger("pathnas.stages")
STAGES_FILE = "stages.json"


def content_hash(value: Any) -> str:
    """SHA-256 of a file's bytes, a folder's files (names and bytes), or a JSON-able setting."""
    digest = hashlib.sha256()
    if isinstance(value, Path):
        if value.is_file():
            with open(value, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        elif value.is_dir():
            for p in sorted(q for q in value.rglob("*") if q.is_file()):
                digest.update(str(p.relative_to(value)).encode())
                digest.update(content_hash(p).encode())
        else:
            raise FileNotFoundError(f"stage input {value} does not exist")
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load(run_dir: Path) -> dict:
    path = run_dir / STAGES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def run_stage(run_dir: Path, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any],
              force: bool = False) -> bool:
    """Run ``fn`` unless the stage already finished for these inputs. Returns True if it ran."""
    run_dir = Path(run_dir)
    hashes = {key: content_hash(value) for key, value in inputs.items()}
    record = _load(run_dir).get(name)
    if not force and record and record["inputs"] == hashes and all(Path(o).exists() for o in outputs):
        log.info("stage %s: up to date, skipped", name)
        return False
    log.info("stage %s: running", name)
    fn()
    missing = [str(o) for o in outputs if not Path(o).exists()]
    if missing:
        raise RuntimeError(f"stage {name} finished without writing {', '.join(missing)}")
    stages = _load(run_dir)  # re-read: the stage itself may have recorded sub-stages
    stages[name] = {"inputs": hashes, "outputs": [str(Path(o).relative_to(run_dir)) if Path(o).is_relative_to(run_dir)
                                                  else str(o) for o in outputs],
                    "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(run_dir / STAGES_FILE, stages)
    return True
