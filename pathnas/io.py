"""Files, written so that nothing half-written looks finished, and read with errors that name them.

Torch-free (the workstation runtime uses it): a stage's file is written to a temporary name
and renamed; JSON is read through one helper that turns every way a file can be wrong into
an ``InvalidFileError`` naming it; SHA-256 of files is computed in one place.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import InvalidFileError, MissingFileError

# Files a run or a bundle writes are read by other accounts (a hospital's service user).
FILE_MODE = 0o644


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted ``atomic_path`` left in ``folder`` (not recursive)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(path: Path, what: str = "file", hint: str | None = None) -> str:
    """A text file's contents; MissingFileError (with ``hint``: how to make it) or InvalidFileError naming it."""
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist" + (f": {hint}" if hint else ""))
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidFileError(f"{what} {path}: cannot be read ({err})") from None


def read_json(path: str | os.PathLike, what: str = "file", hint: str | None = None, kind: type | None = dict) -> Any:
    """The JSON in ``path``; MissingFileError (with ``hint``: how to make it) or InvalidFileError naming it.

    ``kind`` is the type the top level must have (dict by default; None accepts any).
    """
    path = Path(path)
    try:
        value = json.loads(read_text(path, what, hint))
    except json.JSONDecodeError as err:
        raise InvalidFileError(f"{what} {path}: not valid JSON ({err})") from None
    except RecursionError:
        raise InvalidFileError(f"{what} {path}: JSON nested too deeply") from None
    if kind is not None and not isinstance(value, kind):
        raise InvalidFileError(f"{what} {path}: expected a JSON {kind.__name__}, found {type(value).__name__}")
    return value


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL log; a torn last line (a crash mid-append) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise InvalidFileError(f"{path}: line {i + 1} is not valid JSON") from None
    return records


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rewrite_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace a JSONL log atomically (e.g. dropping the lines of an epoch a crash left unfinished)."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
