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
from llm_server import llamacpp, ollama, vllm

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
        {"reply": "First idea: " + proposal("111111") + " On reflection: " + proposal(good[1])},  # the schema ignored
        {"reply": proposal(good[1])},
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
    # Prose around the JSON (two objects here) is a 200 that did not follow the JSON schema asked for: unusable,
    # recorded as such, and sent back; before the schema, the last object would have been used.
    assert "does not follow the requested JSON schema (the reply is not valid JSON" in prompts[4]
    ignored = [c for c in calls if c.get("type") == "llm_call" and c.get("schema_followed") is False]
    assert [c["reply"][:11] for c in ignored][-1] == "First idea:" and len(ignored) == 3
    assert all(c["schema"] == "architecture_proposal" for c in calls if c.get("type") == "llm_call")
    assert not [c for c in calls if c.get("type") == "reply_note"] and summary["llm"]["schema_ignored"] == 3
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
    markup = json.dumps({"reasoning": "[bold]x", "configuration": ["[/red]", "none", "none", "none", "none", "none"]})
    server = server_factory([{"reply": markup}] * 3)
    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]),
                              "--dataset", "tissue", "--device", "edge_a", "--proposer", "llm", "--llm-base-url",
                              server.url, "--run-dir", str(tmp_path / "a"))
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(errors) == 1 and "'[/red]' is not one of" in errors[0]  # the schema's enum

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
    calls = [c for c in read_jsonl(tmp_path / "run" / "transcript.jsonl") if c["type"] == "llm_call"]
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


# -- local servers: each kind detected, asked for structured output its way, its context respected -------------

KINDS = {"openai": {}, "vllm": vllm(), "llamacpp": llamacpp(), "ollama": ollama()}


def connected_codes(bench, n: int) -> list[str]:
    return [r["ncode"] for r in bench["rows"].values() if r["connected"]][:n]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_server_kind_is_detected_and_asked_for_structured_output_in_its_own_form(kind, bench, server_factory,
                                                                                    tmp_path):
    first, second = connected_codes(bench, 2)
    ignored = "Sure! Here is my proposal:\n```json\n" + proposal(first) + "\n```"  # a 200 that ignored the schema
    server = server_factory([{"reply": ignored}, {"reply": proposal(second)}], **KINDS[kind])
    run = tmp_path / "run"
    summary = search(settings(bench, run, server, iterations=1))
    entries = read_jsonl(run / "transcript.jsonl")
    (found,) = [e for e in entries if e["type"] == "llm_server"]
    assert found["kind"] == kind
    assert {"openai": "an OpenAI-compatible server", "vllm": 'owned_by "vllm"', "llamacpp": 'owned_by "llamacpp"',
            "ollama": "GET /api/version answers (Ollama 0.12.3)"}[kind] in found["detected"]
    assert (found["context_tokens"], found["context_source"]) == {
        "openai": (None, "unknown: prompts are not shortened"), "vllm": (8192, "vLLM /v1/models max_model_len"),
        "llamacpp": (4096, "llama.cpp /props n_ctx (per slot)"),
        "ollama": (2048, "Ollama's default num_ctx 2048")}[kind]

    body, path = server.requests[0]["body"], server.requests[0]["path"]
    schema = {"openai": lambda: body["response_format"]["json_schema"]["schema"],
              "vllm": lambda: body["structured_outputs"]["json"],
              "llamacpp": lambda: body["response_format"]["schema"], "ollama": lambda: body["format"]}[kind]()
    assert schema["required"] == ["reasoning", "configuration"] and schema["additionalProperties"] is False
    assert "guided_json" not in body  # vLLM ignores it since v0.12
    if kind == "openai":
        assert body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
    if kind == "llamacpp":
        assert body["response_format"]["type"] == "json_object"
    if kind == "vllm":
        assert "response_format" not in body
    if kind == "ollama":  # the native API, where format and num_ctx are honoured
        assert path == "/api/chat" and body["stream"] is False and body["options"]["num_ctx"] == 2048
        assert "POST /api/show" in server.probes
    else:
        assert path == "/v1/chat/completions"

    calls = [e for e in entries if e["type"] == "llm_call"]
    assert [c["schema_followed"] for c in calls] == [False, True] and {c["server"] for c in calls} == {kind}
    assert "the reply is not valid JSON" in calls[0]["schema_problem"]
    assert "does not follow the requested JSON schema" in server.prompts()[1]
    assert [r["arch"] for r in read_evaluations(run / "evaluations.jsonl")] == [second]
    assert summary["llm"]["schema_ignored"] == 1 and summary["llm"]["calls"] == 2


def test_a_long_history_is_shortened_to_fit_ollamas_context_instead_of_being_cut_from_the_top(bench, server_factory,
                                                                                          tmp_path, caplog):
    codes = connected_codes(bench, 30)
    caplog.set_level(logging.INFO)
    server = server_factory([{"reply": proposal(c)} for c in codes], **ollama())
    run = tmp_path / "run"
    summary = search(settings(bench, run, server, iterations=len(codes)))
    assert summary["status"] == "completed"
    assert not any(r["truncated"] for r in server.requests)  # Ollama never had to cut a prompt
    assert max(r["server_prompt_tokens"] for r in server.requests) <= 2048 - 512
    entries = read_jsonl(run / "transcript.jsonl")
    shortened = [e for e in entries if e["type"] == "prompt_shortened"]
    assert shortened and summary["llm"]["prompts_shortened"] == len(shortened)
    first = shortened[0]
    records = read_evaluations(run / "evaluations.jsonl")
    history = records[:first["iteration"]]
    from pathnas.search import pareto_front

    front = [r["arch"] for r in pareto_front(history)]
    assert first["dropped"] == [r["arch"] for r in history if r["arch"] not in front][:len(first["dropped"])]
    assert first["dropped_from_pareto_front"] == []  # the oldest rows off the front went first
    prompt = server.prompts()[first["iteration"]]
    assert f"({len(first['dropped'])} older row(s) left out to fit the model's context window" in prompt
    assert all(f"| {code} |" in prompt for code in front) and f"| {first['dropped'][0]} |" not in prompt
    assert first["estimated_tokens_after"] <= first["prompt_token_limit"] < first["estimated_tokens_before"]
    assert "would not fit the model's context" in caplog.text
    calls = [e for e in entries if e["type"] == "llm_call"]
    assert all(c["prompt_tokens_estimate"] >= c["prompt_tokens"] for c in calls)  # the estimate errs on the safe side

    # The same server as a plain OpenAI-compatible one: no context known, none sent; Ollama cuts the top silently.
    more = connected_codes(bench, 60)
    plain = server_factory([{"reply": proposal(c)} for c in more], **ollama())
    search(settings(bench, tmp_path / "plain", plain, iterations=len(more), llm_server="openai"))
    assert plain.requests[-1]["truncated"] and plain.requests[-1]["path"] == "/v1/chat/completions"
    assert not [e for e in read_jsonl(tmp_path / "plain" / "transcript.jsonl") if e["type"] == "prompt_shortened"]


def test_llm_context_is_the_fallback_where_the_server_does_not_say_and_bad_kinds_are_refused(bench, server_factory,
                                                                                          tmp_path):
    codes = connected_codes(bench, 16)
    server = server_factory([{"reply": proposal(c)} for c in codes])  # says nothing of itself
    summary = search(settings(bench, tmp_path / "run", server, iterations=len(codes), llm_context=2048))
    entries = read_jsonl(tmp_path / "run" / "transcript.jsonl")
    (found,) = [e for e in entries if e["type"] == "llm_server"]
    assert (found["kind"], found["context_tokens"], found["context_source"]) == ("openai", 2048, "--llm-context")
    assert summary["status"] == "completed" and summary["llm"]["prompts_shortened"] >= 1
    assert all(c["prompt_tokens_estimate"] <= 2048 - 512 for c in entries if c["type"] == "llm_call")

    # A context too small for the prompt without any history: a clear stop, not a prompt cut anywhere.
    small = server_factory([{"reply": proposal(c)} for c in codes])
    summary = search(settings(bench, tmp_path / "small", small, iterations=2, llm_context=1024))
    assert summary["status"] == "stopped" and "even without its history" in summary["reason"]
    assert "--llm-context" in summary["reason"] and not small.requests

    code, out, err = pathnas_edge("search", "--space", "nb201", "--benchmark", str(bench["path"]), "--dataset",
                                  "tissue", "--device", "edge_a", "--proposer", "llm", "--llm-server", "lmstudio",
                                  "--run-dir", str(tmp_path / "bad"))
    assert code == 2 and "--llm-server" in err and "'auto', 'openai', 'vllm', 'llamacpp' or 'ollama'" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()
