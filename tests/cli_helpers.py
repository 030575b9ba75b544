"""Running the command-line tools inside the test process (a subprocess would re-import torch each time)."""
from __future__ import annotations

import contextlib
import io
import sys

import pytest


def pathnas_edge(*args) -> tuple[int, str, str]:
    """`pathnas-edge ARGS` in this process: the exit code, stdout and stderr."""
    from pathnas.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["pathnas-edge", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    return exit_info.value.code, out.getvalue(), err.getvalue()
