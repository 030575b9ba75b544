"""What the search tests share: the loopback LLM server fixture, the tabular fixture file, running a search
as the CLI and the pipeline build it, and running the CLI in-process."""
from __future__ import annotations

import pytest

from llm_server import ScriptedServer
from nb201_fixture import lookup, write_benchmark
from pathnas.pipeline.stages import latency_factory
from pathnas.search import run_search
from pathnas.settings import SearchSettings

# The LLM client's timeout in tests with a request that never answers: only that request may reach it, so it
# is far beyond the time any answered request takes, even on a loaded machine (the script's replies must
# meet the requests they were written for).
HANG_TIMEOUT_S = 3.0


@pytest.fixture
def server_factory():
    servers = []

    def make(script, **kind):  # kind: a server kind's routes and context (llm_server.ollama(), ...)
        servers.append(ScriptedServer(script, **kind))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The tabular fixture (NAS-Bench-201 format, made-up columns) and its rows by ncode."""
    path = write_benchmark(tmp_path_factory.mktemp("bench") / "fixture.csv.gz")
    return {"path": path, "rows": lookup(path)}


def search(settings: SearchSettings, **kwargs) -> dict:
    """A search with the latency source its settings name (as the CLI and the pipeline build it)."""
    return run_search(settings, latency_factory(settings), **kwargs)

