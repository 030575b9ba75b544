"""``evaluations.jsonl``: what a search evaluated, and what it was made with.

The first line is a header (``"type": "search"``): what the recorded accuracies depend on
(the supernet's SHA-256, the data set's fingerprint, the BN and fine-tuning settings and the
seed; or the benchmark's SHA-256 and the data set column), the device, the budgets and the
other settings. Every further line is one evaluation, appended as it finishes.

On resume (or a pipeline re-run) with other budgets or another latency source, the latency
and verdict of every recorded evaluation are recomputed (both are free and exact); with a
change to anything the accuracies depend on, the search refuses, naming what changed. A
torn last line (a crash mid-append) is cut off before anything is appended after it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pathnas.errors import AlreadyExistsError, InvalidFileError, MadeOtherwiseError
from pathnas.io import read_jsonl, rewrite_jsonl, write_bytes_atomic

log = logging.getLogger("pathnas.search")

HEADER = "search"
FORMAT = 2

# The files of a search's run directory (pathnas.pipeline.RunLayout builds on these names).
EVALUATIONS_FILE = "evaluations.jsonl"
TRANSCRIPT_FILE = "transcript.jsonl"  # every LLM request and reply (pathnas.search.llm.Transcript)
SUMMARY_FILE = "summary.json"
PARETO_FILE = "pareto.png"

# How a changed identity field is named to the user.
_NAMES = {
    "kind": "the kind of search", "space": "the space (--space)", "space_config": "the supernet's space configuration",
    "supernet_sha256": "the supernet (--supernet, SHA-256)", "data": "the data set (--data: its splits or files)",
    "benchmark_sha256": "the benchmark file (--benchmark, SHA-256)", "dataset": "--dataset",
    "torch_device": "the evaluation device (--torch-device)",
}


_RECORD_KEYS = frozenset({"iteration", "arch", "metric", "flops", "params", "latency_ms"})


class SearchMismatchError(MadeOtherwiseError):
    """A run directory's evaluations were made with other inputs than this search's."""


def repair_torn_tail(path: Path) -> bool:
    """Cut a torn last line off a JSONL log (kept whole if it parses); True when something was repaired."""
    if not path.exists():
        return False
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
        write_bytes_atomic(path, data + b"\n")  # a whole record that only lost its newline
    except ValueError:
        write_bytes_atomic(path, data[:start])
        log.warning("%s: dropped a torn last line (%d bytes, a crash while it was written)", path, len(data) - start)
    return True


def _changes(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            name = _NAMES.get(key, f"--{key.replace('_', '-')}")
            if isinstance(a, str) and isinstance(b, str) and len(a) == 64 and len(b) == 64:  # digests
                a, b = a[:12] + "...", b[:12] + "..."
            shown = "" if isinstance(a, dict) or isinstance(b, dict) else f": {a} then, {b} now"
            out.append(f"{name} changed{shown}")
    return out


def refuse_existing(path: Path, resume: bool) -> None:
    """A search never starts over evaluations already recorded, unless it resumes them."""
    if not resume and any(not isinstance(r, dict) or r.get("type") != HEADER for r in read_jsonl(path)):
        raise AlreadyExistsError(f"{path.parent} already holds a search: pass --resume to continue it, or another "
                                 f"--run-dir")


def open_evaluations(path: Path, header: dict, resume: bool, rescore) -> list[dict]:
    """The recorded evaluations (after checks and recomputed verdicts), the header written or updated.

    ``rescore(record, same_device)`` returns the record with latency and verdicts for this search.
    """
    repaired = repair_torn_tail(path) if resume else False
    refuse_existing(path, resume)
    records = read_jsonl(path)
    has_header = bool(records) and isinstance(records[0], dict) and records[0].get("type") == HEADER
    old, history = (records[0], records[1:]) if has_header else (None, records)
    if not history:  # nothing evaluated yet: nothing to keep or to check
        rewrite_jsonl(path, [header])
        return []
    if old is None:
        raise SearchMismatchError(f"{path} records no settings (it was written by an older version): search into "
                                  f"another --run-dir", ["written by an older version"])
    if old.get("format") != FORMAT:
        raise InvalidFileError(f"{path}: format {old.get('format')!r}, this version reads {FORMAT}")
    for line, record in enumerate(history, start=2):
        if not isinstance(record, dict) or not _RECORD_KEYS <= record.keys():
            raise InvalidFileError(f"{path}: line {line} is not an evaluation record (it needs "
                                   f"{', '.join(sorted(_RECORD_KEYS))})")
    changed = _changes(old.get("identity", {}), header["identity"])
    if changed:
        raise SearchMismatchError(f"{path} holds evaluations made with other inputs: {'; '.join(changed)}. Resume "
                                  f"with the same ones, or search into another --run-dir", changed)
    same_device = old.get("device") == header["device"]
    rescored = [rescore(r, same_device) for r in history]
    moved = sum(1 for a, b in zip(history, rescored) if a != b)
    if moved:
        lost = sum(1 for a, b in zip(history, rescored) if a["meets_budgets"] and not b["meets_budgets"])
        gained = sum(1 for a, b in zip(history, rescored) if b["meets_budgets"] and not a["meets_budgets"])
        why = []
        if old.get("budgets") != header["budgets"]:
            why.append(f"budgets: {_budgets(old.get('budgets'))} then, {_budgets(header['budgets'])} now")
        if not same_device or old.get("latency_source") != header["latency_source"]:
            why.append(f"latency: {old.get('device')} ({old.get('latency_source')}) then, {header['device']} "
                       f"({header['latency_source']}) now")
        log.warning("resuming with other %s: latency and verdicts of %d recorded evaluation(s) recomputed; %d no "
                    "longer meet the budgets, %d now do", "; ".join(why) or "latency figures", moved, lost, gained)
    if moved or old != header or repaired:
        rewrite_jsonl(path, [header, *rescored])
    return rescored


def _budgets(budgets: dict | None) -> str:
    budgets = budgets or {}
    parts = [f"latency <= {budgets['latency_ms']:g} ms" if budgets.get("latency_ms") is not None else "",
             f"<= {budgets['mflops']:g} MFLOPs" if budgets.get("mflops") is not None else ""]
    return ", ".join(p for p in parts if p) or "none"


def read_evaluations(path: Path) -> list[dict]:
    """The evaluation records of a run (the header left out)."""
    return [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("type") != HEADER]
