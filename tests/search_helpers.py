"""What the search tests share: the loopback LLM server fixture, the tabular fixture file, running a search
as the CLI and the pipeline build it, and running the CLI in-process."""
from __future__ import annotations


import pytest

from llm_server import ScriptedServer
from nb201_fixture import lookup, write_benchmark
from pathnas.pipeline.stages import latency_factory
from pathnas.search import run_search
from pathnas.settings import SearchSettings


@pytest.fixture
def server_factory():
    servers = []

    def make(script):
        servers.append(ScriptedServer(script))
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

