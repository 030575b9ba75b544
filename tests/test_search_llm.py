"""Nothing an LLM server sends can break a search: the real openai client against a scripted OpenAI-compatible
server on loopback, on the tabular fixture (so each case runs in a fraction of a second)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pathnas.io import read_jsonl
from pathnas.search import read_evaluations
from pathnas.settings import SearchSettings
from search_helpers import HANG_TIMEOUT_S, bench, search, server_factory  # noqa: F401 (fixtures)
from cli_helpers import pathnas_edge

SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def settings(bench, run_dir, server, **overrides) -> SearchSettings:
    base = dict(space="nb201", benchmark=bench["path"], dataset="tissue", device="edge_a", run_dir=run_dir,
                proposer="llm", llm_base_url=server.url if server else None, llm_backoff_s=0.0, llm_timeout_s=5.0)
    return SearchSettings(**{**base, **overrides})


def proposal(code: str, reasoning: str = "test") -> str:
    from nb201_fixture import OPS

    return json.dumps({"reasoning": reasoning, "configuration": [OPS[int(c)] for c in code]})


def no_secret_anywhere(run_dir, *texts: str) -> None:
    """The key in no file of the run and in none of the texts, in any letter case."""
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.lower() not in path.read_bytes().decode(errors="replace").lower(), path
    for text in texts:
        assert SECRET.lower() not in text.lower()


def budget_with_some_over(bench) -> tuple[float, str, str]:
    """A latency budget, a connected cell over it and one within it."""
    rows = [r for r in bench["rows"].values() if r["connected"]]
    budget = float(np.median([r["lat_ms_edge_a"] for r in rows]))
    over = next(r["ncode"] for r in rows if r["lat_ms_edge_a"] > budget * 1.2)
    within = next(r["ncode"] for r in rows if r["lat_ms_edge_a"] < budget * 0.8 and r["ncode"] != over)
    return budget, over, within


# -- section 4: every kind of bad reply or response ends in a retry with the precise reason --------------

def test_every_kind_of_bad_reply_or_response_is_retried_with_the_precise_reason(bench, server_factory, tmp_path,
                                                                                caplog):
    good = ["333123", "313103", "323103", "330132", "332123"]
    completion = json.loads(json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4o",
                                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}))
    huge_int_body = json.dumps(completion).replace('"created": 0', '"created": ' + "7" * 5000)
    server = server_factory([
        {"reply": '{"configuration": [' + "9" * 5000 + "]}"},                          # an integer of 5,000 digits
        {"reply": '{"configuration": ' + "[" * 200_000 + "]" * 200_000 + "}"},       # JSON nested 200,000 deep
        {"reply": proposal(good[0])},
        {"reply": "First idea: " + proposal("111111") + " On reflection: " + proposal(good[1])},  # two objects
        {"reply": proposal(good[2], reasoning="keep {the skip on 0->3 and go")},      # an unbalanced brace in a string
        {"body": "<!doctype html><html><body>Gateway</body></html>", "content_type": "text/html"},  # 200 + HTML
        {"body": json.dumps({**completion, "choices": []})},                          # choices: []
        {"body": json.dumps({"error": {"message": "model overloaded", "type": "server_error"}})},  # an error body
        {"cut": True},                                                                # connection closed mid-way
        {"body": huge_int_body},                                                      # the response: a huge integer
        {"body": '{"choices": ' + "[" * 200_000 + "]" * 200_000 + "}"},              # the response: nested deep
        {"reply": proposal(good[3])},
        {"reply": proposal(good[4])},
    ])
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    summary = search(settings(bench, run, server, iterations=5, llm_retries=6))
    assert summary["status"] == "completed"
    assert [r["arch"] for r in read_evaluations(run / "evaluations.jsonl")] == good

    prompts = server.prompts()
    assert "it holds an integer of 5,000 digits" in prompts[1]
    assert "the reply nests brackets 200,001 deep" in prompts[2]
    calls = read_jsonl(run / "transcript.jsonl")
    notes = [c["note"] for c in calls if c.get("type") == "reply_note"]
    second = len("First idea: " + proposal("111111") + " On reflection: ")
    assert notes == [f"the reply holds 2 JSON objects that differ; used the last one (at character {second})"]
    assert "used the last one" in caplog.text
    errors = [c["error"] for c in calls if c.get("type") == "llm_call" and c["error"]]
    assert len(errors) == 6
    assert "status 200 with an HTML page (text/html)" in errors[0] and "Gateway" in errors[0]
    assert "empty choices list (choices: [])" in errors[1]
    assert "error body: model overloaded" in errors[2]
    assert errors[3].startswith("APIConnectionError")
    assert "integer of 5,000 digits" in errors[4] and "nests JSON too deeply" in errors[5]
    assert summary["llm"]["failed_calls"] == 6


def test_a_server_that_keeps_failing_stops_cleanly_and_resume_continues(bench, server_factory, tmp_path, monkeypatch,
                                                                        capsys):
    failing = server_factory([{"reply": proposal("333123")}] + [{"body": "<html>maintenance</html>",
                                                                  "content_type": "text/html"}] * 10)
    args = ["search", "--space", "nb201", "--benchmark", str(bench["path"]), "--dataset", "tissue", "--device",
            "edge_a", "--proposer", "llm", "--iterations", "3", "--run-dir", str(tmp_path / "run"),
            "--llm-retries", "1", "--llm-backoff", "0"]
    code, out, err = pathnas_edge(*args, "--llm-base-url", failing.url)
    assert code == 3 and len(failing.requests) == 3  # one good call, then one try and one retry
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"the LLM server at {failing.url} failed 2 times in a row" in errors[0]
    assert "HTML page" in errors[0] and "--resume" in errors[0] and "Traceback" not in err
    assert "HTTP Request" not in err  # httpx's request lines only with --verbose
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "stopped" and saved["best"]["arch"] == "333123"

    working = server_factory([{"reply": proposal(c)} for c in ("313103", "323103")])
    code, out, err = pathnas_edge(*args, "--llm-base-url", working.url, "--resume")
    assert code == 0, err
    assert [r["arch"] for r in read_evaluations(tmp_path / "run" / "evaluations.jsonl")] == ["333123", "313103",
                                                                                             "323103"]


def test_reply_text_is_never_markup_and_a_stop_message_shows_redacted_literally(bench, server_factory, tmp_path,
                                                                                monkeypatch, capsys):
    markup = json.dumps({"configuration": ["[/red]", "[bold]x", "none", "none", "none", "none"]})
    server = server_factory([{"reply": markup}] * 3)
    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                              "--dataset", "tissue", "--device", "edge_a", "--proposer", "llm", "--llm-base-url",
                              server.url, "--run-dir", str(tmp_path / "a"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(errors) == 1 and "'[/red]' is not allowed" in errors[0]

    echo = server_factory([{"status": 401, "echo_auth": "upper"}])  # the key echoed, in another case
    code, out, err = pathnas_edge("--verbose", "search", "--space", "nb201", "--benchmark",
                              str(bench["path"]), "--dataset", "tissue", "--device", "edge_a", "--proposer", "llm",
                              "--llm-base-url", echo.url, "--run-dir", str(tmp_path / "b"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(errors) == 1 and "scripted failure for BEARER [redacted]" in errors[0]
    assert echo.requests[0]["auth"] == f"Bearer {SECRET}"  # the server did get the key
    no_secret_anywhere(tmp_path, out, err)


def test_credentials_in_the_base_url_are_never_logged_or_recorded(bench, server_factory, tmp_path, monkeypatch,
                                                                  capsys):
    server = server_factory([{"status": 503}] * 3)
    url = f"http://alice:hunter2-pass@127.0.0.1:{server.port}/v1?api-key=q-SECRET-77&deployment=x"
    code, out, err = pathnas_edge("--verbose", "search", "--space", "nb201", "--benchmark",
                              str(bench["path"]), "--dataset", "tissue", "--device", "edge_a", "--proposer", "llm",
                              "--llm-base-url", url, "--llm-retries", "1", "--llm-backoff", "0",
                              "--run-dir", str(tmp_path / "run"))
    assert code == 3
    shown = f"http://127.0.0.1:{server.port}/v1?api-key=[redacted]&deployment=x"
    assert f"the LLM server at {shown} failed 2 times" in err
    assert "HTTP Request" in err  # --verbose shows httpx's lines ...
    for text in [out, err] + [p.read_text() for p in (tmp_path / "run").rglob("*") if p.is_file()]:
        assert "hunter2-pass" not in text and "q-SECRET-77" not in text and "alice:" not in text  # ... without them
    calls = read_jsonl(tmp_path / "run" / "transcript.jsonl")
    assert {c["base_url"] for c in calls} == {shown}
    assert read_jsonl(tmp_path / "run" / "evaluations.jsonl")[0]["settings"]["llm_base_url"] == shown


def test_a_request_that_never_answers_times_out_and_is_retried(bench, server_factory, tmp_path):
    server = server_factory([{"hang": True}, {"reply": proposal("333123")}])  # only the client's timeout ends it
    summary = search(settings(bench, tmp_path / "run", server, iterations=1, llm_timeout_s=HANG_TIMEOUT_S))
    calls = read_jsonl(tmp_path / "run" / "transcript.jsonl")
    assert summary["status"] == "completed" and len(server.requests) == 2
    assert "Timeout" in calls[0]["error"] and calls[1]["reply"]


# -- section 3: what the LLM is shown ---------------------------------------------------------------------

def test_over_budget_proposals_go_back_with_their_figures_and_fall_back_after_the_retries(bench, server_factory,
                                                                                         tmp_path, caplog):
    budget, over, within = budget_with_some_over(bench)
    server = server_factory([{"reply": proposal(over)}] * 3 + [{"reply": proposal(within)}])
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    summary = search(settings(bench, run, server, iterations=2, budget_ms=budget))
    assert summary["status"] == "completed"  # over budget never stops the search
    records = read_evaluations(run / "evaluations.jsonl")
    assert records[0]["proposer"] == "prior-bo (fallback)" and records[1]["arch"] == within
    assert all(r["meets_budgets"] for r in records)

    prompts = server.prompts()
    latency = bench["rows"][over]["lat_ms_edge_a"]
    from pathnas.search.figures import sig

    assert f"was not evaluated: MISSED latency {sig(latency)} ms > budget {sig(budget)} ms" in prompts[1]
    assert "MFLOPs" in prompts[1] and "stays in the history as rejected" in prompts[1]
    history = prompts[3].split("## Evaluated architectures so far")[1]
    assert f"| 0 (not evaluated) | {over} |" in history and "MISSED latency" in history
    assert f"| 0 | {records[0]['arch']} |" in history and "| met |" in history
    entries = read_jsonl(run / "transcript.jsonl")
    assert sum(e["type"] == "rejected" for e in entries) == 3
    (fallback,) = [e for e in entries if e["type"] == "fallback"]
    assert fallback["proposer"] == "prior-bo" and fallback["arch"] == records[0]["arch"]
    assert "prior-bo proposes for this iteration" in caplog.text
    assert summary["llm"]["rejected_proposals"] == 3 and summary["llm"]["fallback_iterations"] == 1


def test_the_prompts_state_objective_budgets_verdicts_and_the_latency_source(bench, server_factory, tmp_path):
    budget, over, within = budget_with_some_over(bench)
    seen = []

    def rank(body):
        seen.append(body["messages"][-1]["content"])
        return {"reply": json.dumps({"choice": 1})}

    server = server_factory([{"reply": proposal(over)}, {"reply": proposal(within)}, rank, rank])
    search(settings(bench, tmp_path / "llm", server, iterations=1, budget_ms=budget))
    first = server.prompts()[0]
    assert "Objective: maximize tissue_val on the validation split" in first
    assert "measured on the device: column lat_ms_edge_a of the benchmark fixture.csv.gz" in first
    assert "edge 0->1: \"none\", \"skip_connect\", \"nor_conv_1x1\", \"nor_conv_3x3\", \"avg_pool_3x3\"" in first
    assert f"latency on the device at most {budget:.3g} ms" in first or "latency on the device at most" in first

    search(settings(bench, tmp_path / "rank", server, proposer="llm-rank", iterations=2, budget_ms=budget))
    prompt = seen[-1]
    assert "Objective: maximize tissue_val on the validation split" in prompt
    assert "Budgets: latency on the device at most" in prompt
    assert "measured on the device: column lat_ms_edge_a" in prompt
    assert "verdict: met" in prompt and "1. NCode: " in prompt and "MFLOPs: " in prompt


def test_small_latencies_keep_their_precision_in_the_prompt(bench, server_factory, tmp_path):
    from pathnas.search.figures import ms, sig

    server = server_factory([{"reply": proposal(code)} for code in ("111111", "111112", "111113")])
    search(settings(bench, tmp_path / "run", server, device="tiny", iterations=3))
    history = server.prompts()[2].split("## Evaluated architectures so far")[1]
    a, b = (bench["rows"][code]["lat_ms_tiny"] for code in ("111111", "111112"))
    assert f"{a:.3f}" == f"{b:.3f}"  # what a fixed three decimals would print for both ...
    assert f"| {sig(a)} ms |" in history and f"| {sig(b)} ms |" in history and sig(a) != sig(b)  # ... kept apart
    assert sig(0.0099) == "0.0099" and sig(0.0096) == "0.0096" and ms(0.0099) != ms(0.0096)
