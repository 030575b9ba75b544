"""The search loop against a real OpenAI-compatible server on loopback, driven by the real openai client."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from pathnas.data import generate
from pathnas.io import read_jsonl
from pathnas.profiling import load_profile, measure_table, save_table
from pathnas.search import ProposalError, SearchMismatchError, ncode, parse_choice, parse_proposal, read_evaluations
from pathnas.settings import SearchSettings
from pathnas.spaces import space_config
from pathnas.train import PretrainConfig, pretrain
from search_helpers import HANG_TIMEOUT_S, search, server_factory  # noqa: F401 (fixtures)

SECRET = "sk-test-SECRET-0123456789"
TINY = dict(width_mult=0.25, input_size=32, num_classes=4, stage_repeats=(1, 1, 1, 1))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core machine two spinning OpenMP threads make these tiny convolutions several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- a tiny pretrained supernet, its data and a table measured here -----------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    generate(root / "data", "classify", n_per_class=6, image_size=32, seed=0)
    cfg = PretrainConfig(data=root / "data", run_dir=root / "supernet", epochs=1, batch_size=8, workers=0,
                         eval_paths=0, device="cpu", max_steps_per_epoch=2)
    result = pretrain(space_config("shufflenet", **TINY), cfg, progress=False)
    table = measure_table(result.supernet, load_profile("cpu"), subnets=5, fit_subnets=3, rounds=1)
    save_table(table, root / "table.json")
    budget = sorted(r["predicted_ms"] for r in table["end_to_end"])[2]  # about half the space fits
    return {"root": root, "supernet": root / "supernet" / "last.pt", "data": root / "data",
            "table": root / "table.json", "budget_ms": budget}


def settings(world, run_dir: Path, **overrides) -> SearchSettings:
    base = dict(device="cpu", supernet=world["supernet"], data=world["data"], run_dir=run_dir,
                latency_table=world["table"], bn_images=16, batch_size=16, measure_local=False,
                llm_model="gpt-4o", llm_backoff_s=0.01, llm_timeout_s=5.0)
    return SearchSettings(**{**base, **overrides})


def proposal(values) -> str:
    return json.dumps({"reasoning": "test", "configuration": values})


# -- the LLM proposer against every kind of reply -----------------------------------------------

def test_llm_search_survives_every_kind_of_reply(world, server_factory, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = server_factory([
        {"reply": proposal([3, 3, 3, 3])},                                            # good JSON
        {"reply": "Here you go:\n```json\n" + proposal([5, 5, 5, 5]) + "\n```"},      # fenced JSON: the schema
        {"reply": proposal([5, 5, 5, 5])},                                            # was ignored, so sent back
        {"reply": "I suggest larger kernels late. " + proposal([3, 5, 7, 7]) + " Good luck!"},  # prose: likewise
        {"reply": proposal([3, 5, 7, 7])},
        {"reply": proposal([3, 5, 7])},                                               # wrong length ...
        {"reply": proposal(["id", 5, 7, 3])},                                         # ... then fixed
        {"reply": proposal([3, 4, 7, 3])},                                            # a value outside the space ...
        {"reply": proposal([7, 7, 7, 7])},
        {"reply": proposal([3, 3, 3, 3])},                                            # a repeat ...
        {"reply": proposal([5, 3, 5, 3])},
        {"status": 500},                                                              # a server error ...
        {"reply": proposal([7, 5, 3, "id"])},
        {"hang": True},                                                               # a timeout ...
        {"reply": proposal([3, 7, 3, 7])},
    ])
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    # The timeout ends only the request that hangs: 3 s is far beyond any answered request, even on a
    # loaded machine, so the script's replies meet the requests they were written for.
    summary = search(settings(world, run, proposer="llm", llm_base_url=server.url, iterations=8,
                              budget_ms=world["budget_ms"] * 10, llm_timeout_s=HANG_TIMEOUT_S))
    evaluations = read_evaluations(run / "evaluations.jsonl")
    assert [e["arch"] for e in evaluations] == ["3333", "5555", "3577", "0573", "7777", "5353", "7530", "3737"]
    assert summary["status"] == "completed" and summary["evaluations"] == 8
    assert all(0 <= e["metric"] <= 100 and e["flops"] > 0 and e["latency_ms"] > 0 for e in evaluations)

    prompts = server.prompts()
    first = prompts[0]
    assert "x86-cpu-ort" in first and "onnxruntime-cpu" in first and "latency on the device at most" in first
    assert "predicted from a latency table measured on the device" in first
    assert " ms |" in prompts[1] and "| 0 | 3333 |" in prompts[1]  # the history carries latency figures
    assert "does not follow the requested JSON schema (the reply is not valid JSON" in prompts[2]
    assert "does not follow the requested JSON schema" in prompts[4]
    assert "an architecture has 4 decisions, got 3" in prompts[6]
    assert "at configuration/1: 4 is not one of ['id', 3, 5, 7]" in prompts[8]  # the schema's enum
    assert "3333 was already evaluated" in prompts[10]
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)

    transcript = (run / "transcript.jsonl").read_text()
    calls = [c for c in read_jsonl(run / "transcript.jsonl") if c["type"] == "llm_call"]
    assert [c["schema_followed"] for c in calls].count(False) == 3 and summary["llm"]["schema_ignored"] == 3
    assert sum(1 for c in calls if c["error"]) == 2  # the 500 and the timeout, both retried
    # the hung request's place in the sequence: its retry got the next reply (3737), nothing got a reply twice
    assert [bool(c["error"]) for c in calls][-3:] == [False, True, False] and len(calls) == len(server.requests)
    assert any("InternalServerError" in c["error"] for c in calls if c["error"])
    assert any("Timeout" in c["error"] for c in calls if c["error"])
    assert all(c["prompt_tokens"] == 100 and c["cost_usd_estimate"] > 0 for c in calls if not c["error"])
    assert SECRET not in transcript and SECRET not in caplog.text
    assert summary["llm"]["calls"] == len(calls) and (run / "pareto.png").stat().st_size > 1000


def test_the_search_stops_cleanly_when_the_server_keeps_failing(world, server_factory, tmp_path):
    server = server_factory([{"reply": proposal([3, 3, 3, 3])}] + [{"status": 503}] * 10)
    run = tmp_path / "run"
    summary = search(settings(world, run, proposer="llm", llm_base_url=server.url, iterations=5, llm_retries=2))
    assert summary["status"] == "stopped" and "failed 3 times in a row" in summary["reason"]
    assert [e["arch"] for e in read_evaluations(run / "evaluations.jsonl")] == ["3333"]  # what was done is kept
    assert json.loads((run / "summary.json").read_text())["best"]["arch"] == "3333"


def test_an_llm_that_never_gives_a_valid_answer_stops_the_search_cleanly(world, server_factory, tmp_path):
    server = server_factory([{"reply": "I cannot help with that."}] * 3)
    summary = search(settings(world, tmp_path / "run", proposer="llm", llm_base_url=server.url, iterations=2))
    assert summary["status"] == "stopped" and "no valid new architecture in 3 attempts" in summary["reason"]
    assert "does not follow the requested JSON schema (the reply is not valid JSON" in server.prompts()[1]


def test_replay_needs_no_network(world, server_factory, tmp_path):
    server = server_factory([{"reply": proposal(v)} for v in ([3, 3, 3, 3], [5, 5, 5, 5], [7, 7, 7, 7])])
    first = search(settings(world, tmp_path / "live", proposer="llm", llm_base_url=server.url, iterations=3))
    server.close()
    replayed = search(settings(world, tmp_path / "replay", proposer="llm", iterations=3,
                                   llm_base_url="http://127.0.0.1:9/v1",  # nothing listens there
                                   replay=tmp_path / "live" / "transcript.jsonl"))
    live = read_evaluations(tmp_path / "live" / "evaluations.jsonl")
    again = read_evaluations(tmp_path / "replay" / "evaluations.jsonl")
    assert [e["arch"] for e in again] == [e["arch"] for e in live]
    assert [round(e["metric"], 4) for e in again] == [round(e["metric"], 4) for e in live]
    assert replayed["best"]["arch"] == first["best"]["arch"]


def test_llm_rank_picks_one_of_the_feasible_candidates(world, server_factory, tmp_path):
    seen = []

    def pick_first(body):
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        return {"reply": json.dumps({"choice": 1})}

    server = server_factory([pick_first] * 3)
    run = tmp_path / "run"
    summary = search(settings(world, run, proposer="llm-rank", llm_base_url=server.url, iterations=3,
                                  budget_ms=world["budget_ms"]))
    assert summary["status"] == "completed"
    evaluations = read_evaluations(run / "evaluations.jsonl")
    assert all(e["meets_budgets"] for e in evaluations)
    assert "Candidates (all meet the budgets)" in seen[0] and "NCode" in seen[-1]
    first_candidate = seen[0].split("Candidates (all meet the budgets):\n")[1].split("\n")[0]
    assert first_candidate.startswith("1. NCode: ")
    space = space_config("shufflenet", **TINY)
    from pathnas.spaces import build_supernet

    sp = build_supernet(space).space
    assert ncode(sp.decode(evaluations[0]["arch"]), sp) == first_candidate.removeprefix("1. NCode: ").split(" ")[0]


def test_rate_limits_honour_retry_after(world, server_factory, tmp_path, monkeypatch):
    import pathnas.search.llm as llm

    delays = []
    monkeypatch.setattr(llm.time, "sleep", delays.append)
    server = server_factory([{"status": 429, "headers": {"Retry-After": "7"}}, {"status": 503},
                             {"reply": proposal([5, 5, 5, 5])}])
    summary = search(settings(world, tmp_path / "run", proposer="llm", llm_base_url=server.url, iterations=1,
                                  llm_backoff_s=0.25))
    assert summary["status"] == "completed" and len(server.requests) == 3
    assert delays[0] == 7.0  # the server's Retry-After, not our backoff
    assert 0.25 <= delays[1] <= 0.5  # second retry without Retry-After: backoff 0.25 * 2 with jitter in [0.5, 1]


def test_the_key_never_reaches_an_error_message_summary_or_log(world, server_factory, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = server_factory([{"status": 401, "echo_auth": True}])
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    summary = search(settings(world, run, proposer="llm", llm_base_url=server.url, iterations=2))
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"  # the server did get the key ...
    assert summary["status"] == "stopped" and "refused the request" in summary["reason"]
    assert "[redacted]" in summary["reason"]  # ... and echoed it, redacted everywhere after
    for path in (run / "summary.json", run / "transcript.jsonl"):
        assert SECRET not in path.read_text()
    assert SECRET not in caplog.text and len(server.requests) == 1  # a 401 is not retried


def test_roofline_latency_is_labelled_an_estimate_in_the_prompt_and_summary(world, server_factory, tmp_path):
    server = server_factory([{"reply": proposal([3, 3, 3, 3])}, {"reply": proposal([5, 5, 5, 5])}])
    summary = search(settings(world, tmp_path / "run", device="jetson", latency_table=None, iterations=2,
                                  latency_source="roofline", proposer="llm", llm_base_url=server.url, budget_ms=5.0))
    first, second = server.prompts()
    assert "jetson-orin-nano" in first and "ROOFLINE ESTIMATES" in first
    assert "at most ~5 ms (roofline estimate)" in first
    assert "ms (roofline estimate) | met |" in second  # the history row of the first evaluation
    assert summary["device"]["is_estimate"] and summary["device"]["source"] == "roofline-estimate"
    assert all(e["latency_is_estimate"] for e in read_evaluations(tmp_path / "run" / "evaluations.jsonl"))


def test_finetuned_evaluation_and_latency_measured_on_this_machine(world, tmp_path):
    run = tmp_path / "run"
    search(settings(world, run, proposer="random", iterations=1, finetune_epochs=1, measure_local=True))
    (record,) = read_evaluations(run / "evaluations.jsonl")
    assert record["finetune_epochs"] == 1 and 0 <= record["metric"] <= 100
    assert record["measured_latency_ms"] > 0  # the cpu profile runs here, so it was timed, not only predicted


# -- offline proposers, budgets and resume ------------------------------------------------------

@pytest.mark.parametrize("proposer", ["prior-bo", "random", "evolution"])
def test_offline_proposers_honour_the_budgets(world, tmp_path, proposer):
    run = tmp_path / proposer
    summary = search(settings(world, run, proposer=proposer, iterations=4, budget_ms=world["budget_ms"]))
    evaluations = read_evaluations(run / "evaluations.jsonl")
    assert len({e["arch"] for e in evaluations}) == 4
    assert all(e["latency_ms"] <= world["budget_ms"] and e["meets_budgets"] for e in evaluations)
    assert summary["best"]["metric"] == max(e["metric"] for e in evaluations)


def test_auto_picks_the_offline_default_and_says_why(world, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    caplog.set_level(logging.INFO)
    summary = search(settings(world, tmp_path / "run", proposer="auto", iterations=1))
    assert summary["proposer"] == "prior-bo" and "no LLM is configured" in summary["proposer_choice"]["why"]
    assert "proposer prior-bo (auto: no LLM is configured" in caplog.text


def test_resume_does_not_re_evaluate(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    search(settings(world, run, proposer="random", iterations=2))
    first = read_evaluations(run / "evaluations.jsonl")
    with pytest.raises(FileExistsError, match="--resume"):
        search(settings(world, run, proposer="random", iterations=4))
    import pathnas.search.loop as loop

    evaluated = []
    original = loop.Search.evaluate
    monkeypatch.setattr(loop.Search, "evaluate",
                        lambda self, arch, *a, **k: evaluated.append(arch.code) or original(self, arch, *a, **k))
    summary = search(settings(world, run, proposer="random", iterations=4, resume=True))
    records = read_evaluations(run / "evaluations.jsonl")
    assert records[:2] == first and len(records) == 4 and len(evaluated) == 2
    assert not set(evaluated) & {r["arch"] for r in first} and summary["evaluations"] == 4


# -- same inputs, same search ---------------------------------------------------------------------

def test_every_path_is_recalibrated_on_the_same_images_whatever_its_turn(world, tmp_path):
    from pathnas.search.targets import SupernetTarget

    target = SupernetTarget(settings(world, tmp_path / "run"))
    assert sum(len(x) for x, _ in target.calibration) == 16  # bn_images, drawn once
    a, b = target.space.decode("3573"), target.space.decode("7777")
    first = target.evaluate(a)["metrics"]
    target.evaluate(b)
    assert target.evaluate(a)["metrics"] == first


def test_a_resumed_supernet_search_scores_like_an_uninterrupted_one(world, tmp_path):
    whole = search(settings(world, tmp_path / "whole", proposer="random", iterations=4))
    search(settings(world, tmp_path / "parts", proposer="random", iterations=2))
    resumed = search(settings(world, tmp_path / "parts", proposer="random", iterations=4, resume=True))
    runs = [read_evaluations(tmp_path / name / "evaluations.jsonl") for name in ("whole", "parts")]
    assert [(r["arch"], r["metric"]) for r in runs[0]] == [(r["arch"], r["metric"]) for r in runs[1]]
    assert whole["best"]["arch"] == resumed["best"]["arch"]


def test_evaluations_record_what_they_were_made_with_and_a_new_budget_is_applied_to_them(world, tmp_path, caplog):
    run = tmp_path / "run"
    search(settings(world, run, proposer="random", iterations=4))
    header = read_jsonl(run / "evaluations.jsonl")[0]
    from pathnas.io import sha256_file

    assert header["identity"]["supernet_sha256"] == sha256_file(world["supernet"])
    assert header["identity"]["bn_images"] == 16 and header["settings"]["proposer"] == "random"
    flops = sorted(r["flops"] for r in read_evaluations(run / "evaluations.jsonl"))
    budget = (flops[1] + flops[2]) / 2 / 1e6  # two of the four recorded paths are over it
    caplog.set_level(logging.WARNING)
    summary = search(settings(world, run, proposer="random", iterations=4, budget_mflops=budget, resume=True))
    records = read_evaluations(run / "evaluations.jsonl")
    assert sum(r["meets_budgets"] for r in records) == 2 and summary["best"]["flops"] / 1e6 <= budget
    assert all("MFLOPs > budget" in r["verdict"] for r in records if not r["meets_budgets"])
    assert "2 no longer meet the budgets" in caplog.text


def test_the_pipeline_stage_resumes_the_search_and_applies_a_new_budget(world, tmp_path):
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_search

    layout = RunLayout(tmp_path / "pipe")
    first = stage_search(layout, settings(world, layout.search_dir, proposer="random", iterations=3, resume=True))
    assert stage_search(layout, settings(world, layout.search_dir, proposer="random", iterations=3,
                                         resume=True)) == first  # finished: skipped
    flops = sorted(r["flops"] for r in read_evaluations(layout.evaluations))
    budget = (flops[0] + flops[1]) / 2 / 1e6
    again = stage_search(layout, settings(world, layout.search_dir, proposer="random", iterations=3, resume=True,
                                          budget_mflops=budget))
    assert again["evaluations"] == 3 and again["best"]["flops"] / 1e6 <= budget  # never a path over the budget


def test_the_pipeline_stage_keeps_a_stale_search_aside_and_starts_afresh(world, tmp_path, caplog):
    from pathnas.pipeline import RunLayout
    from pathnas.pipeline.stages import stage_search

    layout = RunLayout(tmp_path / "pipe")
    stage_search(layout, settings(world, layout.search_dir, proposer="random", iterations=2, resume=True))
    old = read_evaluations(layout.evaluations)
    # this run's supernet was retrained with another seed, say: the search's own seed changed with it
    fresh = stage_search(layout, settings(world, layout.search_dir, proposer="random", iterations=2, seed=1,
                                          resume=True))
    kept = [p for p in layout.root.iterdir() if p.name.startswith("search-before-")]
    assert len(kept) == 1 and read_evaluations(kept[0] / "evaluations.jsonl") == old  # never deleted
    assert fresh["evaluations"] == 2 and "--seed changed: 0 then, 1 now" in caplog.text and str(kept[0]) in caplog.text


def test_a_resume_with_other_evaluation_settings_is_refused_naming_them(world, tmp_path):
    run = tmp_path / "run"
    search(settings(world, run, proposer="random", iterations=1))
    with pytest.raises(SearchMismatchError, match="--bn-images changed: 16 then, 8 now"):
        search(settings(world, run, proposer="random", iterations=2, bn_images=8, resume=True))
    with pytest.raises(SearchMismatchError, match="--seed changed: 0 then, 1 now"):
        search(settings(world, run, proposer="random", iterations=2, seed=1, resume=True))


def test_skip_bad_lets_a_search_read_data_with_an_unreadable_image(world, tmp_path):
    from pathnas.errors import UserError

    data = tmp_path / "data"
    generate(data, "classify", n_per_class=6, image_size=32, seed=0)
    splits = json.loads((data / "splits.json").read_text()) if (data / "splits.json").exists() else None
    if splits is None:
        from pathnas.data import load_or_create_splits

        splits = load_or_create_splits(data)
    broken = data / splits["train"][0]
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match=str(broken)):
        search(settings(world, tmp_path / "run", data=data, proposer="random", iterations=1))
    summary = search(settings(world, tmp_path / "run", data=data, proposer="random", iterations=1, skip_bad=True))
    assert summary["status"] == "completed" and summary["evaluations"] == 1


def test_the_llm_sees_measured_latency_beside_predicted_and_why_a_proposal_was_rejected(world, server_factory,
                                                                                       tmp_path, monkeypatch):
    # The budget splits the space by the world table's predictions; the start-up probe only reports, so
    # however this machine's speed wanders, that split holds.
    server = server_factory([{"reply": proposal([7, 7, 7, 7])}, {"reply": proposal(["id", "id", "id", "id"])}] +
                            [{"reply": proposal(["id", "id", "id", "id"])}] * 3)  # a repeat, then the fallback
    over = world["budget_ms"]  # about half the space fits; 7777 is the slowest path
    summary = search(settings(world, tmp_path / "run", proposer="llm", llm_base_url=server.url, iterations=2,
                              budget_ms=over, measure_local=True))
    assert summary["status"] == "completed"
    prompts = server.prompts()
    assert "architecture 7777 (7,7,7,7) was not evaluated: MISSED latency" in prompts[1]
    assert "| 0 (not evaluated) | 7777 |" in prompts[2]
    assert "measured here" in prompts[2]  # the cpu profile is this machine: measured beside predicted
    assert "0000 was already evaluated" in prompts[3]
    assert read_evaluations(tmp_path / "run" / "evaluations.jsonl")[1]["proposer"] == "prior-bo (fallback)"


# -- parsing replies ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def space():
    from pathnas.spaces import build_supernet

    return build_supernet(space_config("shufflenet", **TINY)).space


def test_parse_maps_values_not_indices(space):
    assert parse_proposal('{"configuration": [3, 5, 7, "id"]}', space).code == "3570"
    assert parse_proposal('{"configuration": ["3", "5", "7", "ID"]}', space).code == "3570"
    assert parse_proposal('{"configuration": "3570"}', space).code == "3570"
    with pytest.raises(ProposalError, match="holds no JSON"):
        parse_proposal("no json here", space)
    with pytest.raises(ProposalError, match="does not parse"):
        parse_proposal("```json\n{configuration: [3]}\n```", space)
    with pytest.raises(ProposalError, match='no "configuration" or "architecture" field'):
        parse_proposal('{"arch": [3, 3, 3, 3]}', space)
    payload = '{"configuration": ["__import__(\'os\').system(\'false\')", 3, 3, 3]}'
    with pytest.raises(ProposalError, match="is not allowed"):
        parse_proposal(payload, space)  # data, never executed


def test_parse_reads_replies_as_data_within_bounds(space):
    notes = []
    two = '{"configuration": [3, 3, 3, 3]} or rather {"configuration": [5, 5, 5, 5]}'
    assert parse_proposal(two, space, notes).code == "5555" and "used the last one" in notes[0]
    assert parse_proposal('{"reasoning": "a { brace", "configuration": [7, 7, 7, 7]}', space).code == "7777"
    with pytest.raises(ProposalError, match="integer of 5,000 digits"):
        parse_proposal('{"configuration": [' + "3" * 5000 + "]}", space)
    with pytest.raises(ProposalError, match="nests brackets 100,002 deep"):
        parse_proposal("[" * 100_000 + '{"configuration": [3, 3, 3, 3]}', space)
    with pytest.raises(ProposalError, match="position 0: list"):
        parse_proposal('{"configuration": [[3], 3, 3, 3]}', space)


def test_parse_choice(space):
    candidates = [space.decode("3333"), space.decode("5757")]
    assert ncode(candidates[1], space) == "2323"
    assert parse_choice('{"choice": "2323"}', space, candidates) == candidates[1]
    assert parse_choice('{"choice": 1}', space, candidates) == candidates[0]
    with pytest.raises(ProposalError, match="one of the 2 candidates"):
        parse_choice('{"choice": "0000"}', space, candidates)


def test_parse_vit_positions_beyond_the_depth():
    from pathnas.spaces import build_supernet

    vit = build_supernet(space_config("vit", input_size=32, num_classes=4)).space
    active = [4, 4] * 12
    assert parse_proposal(json.dumps({"configuration": [12] + active + ["-"] * 4}), vit).code.endswith("----")
    assert parse_proposal(json.dumps({"configuration": [12] + active + [None] * 4}), vit).code.endswith("----")
    with pytest.raises(ProposalError, match=r"position 25 \(block13.heads\) does not apply"):
        parse_proposal(json.dumps({"configuration": [12] + active + [4, 4, 4, 4]}), vit)
    with pytest.raises(ProposalError, match=r"position 25 \(block13.heads\) applies .* allowed: 3, 4, 6, 8"):
        parse_proposal(json.dumps({"configuration": [14] + active + ["-"] * 4}), vit)


def test_system_prompt_variants_are_package_files():
    from pathnas.search import LLMProposer

    assert LLMProposer(None, "none").system_messages() == []
    assert "helpful assistant" in LLMProposer(None, "generic").system_messages()[0]["content"]
    assert "Neural Architecture Search" in LLMProposer(None, "expert").system_messages()[0]["content"]
    with pytest.raises(ValueError, match="expert, generic, none"):
        LLMProposer(None, "chatty")
