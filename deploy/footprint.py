"""What an install of pathnas-edge brings: the dependency closure of its declared requirements,
read from the installed distributions' metadata (importlib.metadata; no network). Torch-free.

The runtime install is the base dependency list (plus the ``runtime`` extra for OpenVINO); the
full toolchain is the ``toolchain`` extra. Tests use the closure to prove that `pathnas-infer`
imports nothing outside it; benchmarks/runtime_path.py sums its installed size.
"""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "pathnas-edge"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """pathnas-edge's base requirements plus those of ``extras``, as installed."""
    out = []
    for req in metadata.requires(DISTRIBUTION) or []:
        marker = re.search(r'extra\s*==\s*"([^"]+)"', req)
        if marker is None or marker.group(1) in extras:
            out.append(req.split(";")[0])
    return out


def requirement_closure(requirements: list[str]) -> set[str]:
    """Installed distributions (normalised names) these requirements pull in, transitively.

    A dependency's own optional extras are skipped; a requirement that is not installed here
    is skipped too (the figures describe this environment).
    """
    seen: set[str] = set()
    todo = [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [_name(r) for r in requires if "extra ==" not in r.replace("'", '"')]
    return seen


def installed_mb(distributions: set[str]) -> float:
    """Sum of the sizes of the files these installed distributions recorded (RECORD), in MB."""
    total = 0
    for name in distributions:
        for file in metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def module_distributions() -> dict[str, set[str]]:
    """Top-level import name -> normalised names of the distributions that provide it."""
    return {module: {d.lower().replace("_", "-") for d in dists}
            for module, dists in metadata.packages_distributions().items()}


def runtime_versions() -> dict[str, str]:
    """Versions of the runtime install's distributions here (with OpenVINO), and Python's."""
    from .machine import versions

    return versions(sorted(requirement_closure(declared_requirements(("runtime",)))))
