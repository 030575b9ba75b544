"""One writer per run directory: an advisory lock on DIR/.lock held for the whole command.

``fcntl.flock`` is released by the kernel when the process dies, so a crashed run never
leaves a stale lock behind; the holder writes its PID into the file so that a second
writer can say who holds it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RunLockedError

LOCK_NAME = ".lock"


class RunLock:
    """``with RunLock(run_dir, "pipeline"):`` ... ; RunLockedError naming the holder if another process has it.

    Re-entrant within a process (the pipeline holds it while its stages take it again).
    """

    _held: dict[Path, int] = {}  # lock file -> depth, for this process

    def __init__(self, folder: str | os.PathLike, command: str = "pathnas-edge"):
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        key = self.path.resolve()
        if RunLock._held.get(key):
            RunLock._held[key] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by {holder}; wait for it to finish "
                                 f"(or use another run directory)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} ({self.command})".encode())
        self._fd = fd
        RunLock._held[key] = 1
        return self

    def __exit__(self, *exc) -> None:
        key = self.path.resolve()
        RunLock._held[key] -= 1
        if RunLock._held[key]:
            return
        del RunLock._held[key]
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
