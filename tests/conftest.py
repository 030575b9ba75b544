"""Fixtures shared by several test files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Holds a run directory's lock in another process until its stdin closes; says "held" once it holds it.
HOLD_LOCK = ("import sys\nfrom pathnas.lock import RunLock\n"
             "with RunLock(sys.argv[1], sys.argv[2]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


@pytest.fixture
def locked():
    """Lock a folder from another process (as a second `pipeline` would find it) until the test ends."""
    holders = []

    def lock(folder: Path, command: str = "pipeline") -> int:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        holders.append(proc)
        assert proc.stdout.readline().strip() == "held"  # no sleeping: the holder says when it holds the lock
        return proc.pid

    yield lock
    for proc in holders:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.fixture(autouse=True, scope="session")
def _latency_tables_in_a_temporary_folder(tmp_path_factory):
    """A search on this host measures a table it lacks into the user's table folder: in tests, a temporary
    one, never the user's ~/.cache."""
    import os

    os.environ["PATHNAS_LATENCY_TABLES"] = str(tmp_path_factory.mktemp("latency-tables"))
    yield
