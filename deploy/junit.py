"""The JUnit XML report of a latency check, the file CI servers display. Torch-free.

Written with the standard library's ElementTree (it escapes every text and attribute), one test
case per check: a failure when the model regressed, an error when the check could not run.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from pathnas.errors import UserError
from pathnas.io import write_text_atomic

SUITE = "pathnas-latency"
CLASSNAME = "pathnas.latency"


def write_case(path: str | Path, name: str, seconds: float, fill: Callable[[ET.Element], None],
               failures: int = 0, errors: int = 0) -> None:
    """One test suite of one test case, which ``fill`` completes (failure, error, properties, output)."""
    suite = ET.Element("testsuite", name=SUITE, tests="1", failures=str(failures), errors=str(errors),
                       time=f"{seconds:.3f}")
    fill(ET.SubElement(suite, "testcase", classname=CLASSNAME, name=name, time=f"{seconds:.3f}"))
    ET.indent(suite)
    write_text_atomic(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n")


def write_result(path: str | Path, name: str, passed: bool, summary: str, seconds: float,
                 properties: dict[str, str] | None = None) -> None:
    """A check that ran: its summary as the output, a failure when it did not pass, ``properties`` as
    the test case's (what CI shows beside it, e.g. the baseline's model)."""
    def fill(case: ET.Element) -> None:
        if properties:
            props = ET.SubElement(case, "properties")
            for key, value in properties.items():
                ET.SubElement(props, "property", name=key, value=str(value))
        if not passed:
            ET.SubElement(case, "failure", message="latency regression").text = summary
        ET.SubElement(case, "system-out").text = summary

    write_case(path, name, seconds, fill, failures=0 if passed else 1)


def write_error(path: str | Path, name: str, message: str, seconds: float = 0.0) -> None:
    """The report of a check that could not run (so CI shows why instead of a missing report)."""
    def fill(case: ET.Element) -> None:
        ET.SubElement(case, "error", message="check could not run").text = message

    write_case(path, name, seconds, fill, errors=1)


@contextmanager
def junit_on_error(path: str | Path | None, name: str):
    """Write the error report when the check inside fails to run, whatever the exception; re-raise it.

    Every way a regress command can end without a verdict goes through here, so CI always gets a file.
    """
    start = time.perf_counter()
    try:
        yield
    except BaseException as err:
        if path is not None:
            message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            if isinstance(err, KeyboardInterrupt):
                message = "interrupted"
            write_error(path, name, message, time.perf_counter() - start)
        raise
