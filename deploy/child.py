"""Running a part of this package in a process of its own (a timing that must not share the
process with anything else), with one line of error when it fails. Torch-free."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from pathnas.errors import UserError


def last_line(text: str) -> str:
    """The last non-empty line of a program's output: what a one-line error quotes."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_module(module: str, args: list[str], cwd: str | Path, failed: str,
               on_line: Callable[[str], None] | None = None, error: type[UserError] = UserError) -> list[str]:
    """``python -m module args`` with this interpreter, in ``cwd`` (never a checkout, whose top-level
    pathnas/ folder would shadow the installed package). Each stdout line goes to ``on_line`` as it
    comes; returns the stderr lines. A non-zero exit raises ``error``: ``failed`` and the child's last
    stderr line."""
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=errors,
                              text=True, cwd=cwd) as child:
            for line in child.stdout:
                if on_line:
                    on_line(line)
        errors.seek(0)
        said = errors.read()
    if child.returncode != 0:
        raise error(f"{failed}: {last_line(said)}")
    return [line.strip() for line in said.splitlines() if line.strip()]
