"""The latency table's file format and where tables are found.

A table holds, for one hardware profile and one supernet configuration, the median latency
of every distinct part (OFA-style: keyed by module and exact input shape, with a digest of
the module's configuration so that another configuration can reuse it), the overhead model
fitted on whole subnets measured end to end, and the predictor's accuracy on held-out
subnets. Files are schema-versioned JSON; every latency key carries its unit. Measuring one
is in ``measure`` (pack -> time -> assemble); this module only reads, writes and finds them.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from pathnas.errors import InvalidFileError, MissingFileError, UserError
from pathnas.io import read_json, write_json_atomic

from .profiles import HardwareProfile

SCHEMA = "pathnas-latency-table/1"
TABLES_ENV = "PATHNAS_LATENCY_TABLES"
TABLE_SUFFIX = ".json"


class NoLatencyTableError(UserError):
    """The device has no measured table for this supernet configuration."""


def config_digest(space_config: dict) -> str:
    canonical = json.dumps(space_config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def table_filename(space_config: dict) -> str:
    return f"{space_config['space']}-{config_digest(space_config)}{TABLE_SUFFIX}"


def packaged_tables_dir(profile: HardwareProfile) -> Path:
    return Path(str(resources.files("pathnas.hardware_profiles"))) / "tables" / profile.name


def user_tables_root() -> Path:
    """$PATHNAS_LATENCY_TABLES, else the per-user cache ($XDG_CACHE_HOME or ~/.cache)/pathnas-edge/latency-tables."""
    if os.environ.get(TABLES_ENV):
        return Path(os.environ[TABLES_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pathnas-edge" / "latency-tables"


def user_tables_dir(profile: HardwareProfile) -> Path:
    """Where tables measured for this user go (a search that measures what it lacks stores them here)."""
    return user_tables_root() / profile.name


def table_folders(profile: HardwareProfile) -> list[Path]:
    """The folders searched for a device's tables, the user's first."""
    return [user_tables_dir(profile), packaged_tables_dir(profile)]


def find_table(profile: HardwareProfile, space_config: dict, table_path: str | Path | None = None) -> Path | None:
    """An explicit path, else the user's folder (``user_tables_dir``), else the tables shipped with the package."""
    if table_path is not None:
        path = Path(table_path)
        if not path.is_file():
            raise MissingFileError(f"latency table {path} does not exist")
        return path
    name = table_filename(space_config)
    return next((f / name for f in table_folders(profile) if (f / name).is_file()), None)


def load_table(path: str | Path) -> dict:
    path = Path(path)
    table = read_json(path, "latency table")
    if table.get("schema") != SCHEMA:
        raise InvalidFileError(f"{path}: not a latency table of schema {SCHEMA} (found {table.get('schema')!r}); "
                               f"measure it again with `pathnas-edge profile measure` (or pack/profile/assemble)")
    for key in ("profile", "space_config", "parts", "overhead", "metadata"):
        if key not in table:
            raise InvalidFileError(f"{path}: latency table lacks {key!r}; measure it again with "
                                   f"`pathnas-edge profile measure` (or pack/profile/assemble)")
    if not isinstance(table["parts"], dict) or not all(
            isinstance(p, dict) and isinstance(p.get("median_ms"), (int, float)) for p in table["parts"].values()):
        raise InvalidFileError(f"{path}: every part of a latency table needs a median_ms")
    return table


def save_table(table: dict, path: str | Path) -> Path:
    write_json_atomic(path, table)
    return Path(path)


def tables_of(profile: HardwareProfile) -> list[tuple[Path, dict]]:
    """Every readable table of this device in its folders (unreadable ones are skipped: they are
    only candidates for reusing parts)."""
    out = []
    for folder in table_folders(profile):
        for path in sorted(folder.glob(f"*{TABLE_SUFFIX}")) if folder.is_dir() else ():
            try:
                table = load_table(path)
            except UserError:
                continue
            if table["profile"] == profile.name:
                out.append((path, table))
    return out
