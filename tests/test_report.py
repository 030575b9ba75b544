"""The reports people look at (`pathnas-edge report`, `pathnas-infer report`), opened in headless Chromium with
the network off (tests/browser.py): they load with no console error and no request leaving the file, every
chart is there with its figures beside it, the screen is not blank, user-supplied text (class names) shows
as text, and a report made twice is the same file. Built from the fixtures the other tests share (the
validated run and its bundle, the tabular benchmark), plus a short real search: no demo run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from browser import chromium, is_blank, open_page
from bundle_helpers import (bundle, classify_run, cli, copy_bundle, imported_distributions, infer,  # noqa: F401
                            rehash, run_infer_here, sync_config, write_slide)
from pathnas.deploy.footprint import declared_requirements, requirement_closure
from search_helpers import bench, search, server_factory  # noqa: F401 (fixtures)
from pathnas.settings import SearchSettings

needs_browser = pytest.mark.skipif(
    chromium() is None, reason="Chromium is not installed: .ci/run installs Debian's `chromium` package when it runs as "
                               "root (or: apt-get install chromium)")
HOSTILE = "<script>alert(1)"  # a class name a browser must show as text (a file name cannot hold a slash)


def in_browser(path: Path, charts: set[str]):
    """The page as Chromium saw it, after the checks every report must pass."""
    page = open_page(path)
    assert page.errors == [], page.errors
    assert page.outside_requests() == []
    assert page.requests[0] == path.resolve().as_uri()
    shown = {c["id"]: c for c in page.facts["charts"]}
    assert charts <= set(shown), charts - set(shown)
    for chart in shown.values():  # drawn at a visible size, its figures in the table beside it
        assert chart["picture"] in ("svg", "img") and chart["width"] > 200 and chart["height"] > 80 and chart["rows"]
    assert all(image["loaded"] for image in page.facts["images"])
    assert page.facts["scripts"] == 0
    assert not is_blank(page.screenshot)
    return page


# -- a run's report ------------------------------------------------------------------------------------

def made_up_table(supernet, profile: str) -> dict:
    """A latency table of every part of ``supernet`` with made-up figures (test data: measuring one takes minutes
    on a busy machine; the report reads whatever the search used)."""
    from pathnas.profiling.tables import SCHEMA

    parts = supernet.latency_parts()
    return {"schema": SCHEMA, "profile": profile, "space": supernet.config.space,
            "space_config": supernet.config.model_dump(mode="json"), "metadata": {"cpu_model": "test"},
            "overhead": {"model": "offset", "scale": 1.0, "offset_ms": 0.05},
            "parts": {p.key: {"median_ms": 0.01 * (1 + i % 7)} for i, p in enumerate(parts)}}


@pytest.fixture(scope="module")
def full_run(classify_run, bundle, tmp_path_factory):
    """The shared validated run (copied) with its bundle in RUN/bundle and a short real search beside them, its
    class names made hostile in the records the report reads."""
    from pathnas.io import write_json_atomic
    from pathnas.profiling import load_profile
    from pathnas.train import load_supernet

    source, data = classify_run
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(source, run)
    copy_bundle(bundle, run / "bundle")
    supernet, _ = load_supernet(run / "supernet" / "last.pt")
    write_json_atomic(run / "table.json", made_up_table(supernet, load_profile("cpu").name))
    search(SearchSettings(device="cpu", supernet=run / "supernet" / "last.pt", data=data, run_dir=run / "search",
                          latency_table=run / "table.json", proposer="random", iterations=3, bn_images=8, batch_size=8,
                          measure_local=False, budget_ms=0.2))
    export = json.loads((run / "export" / "export.json").read_text())
    export["dataset"]["classes"] = [HOSTILE, *export["dataset"]["classes"][1:]]
    write_json_atomic(run / "export" / "export.json", export)
    return run


@needs_browser
def test_the_run_report_opens_in_a_browser_with_every_chart_and_is_made_the_same_twice(full_run, tmp_path):
    junit = tmp_path / "regress.xml"
    from pathnas.deploy.junit import write_result

    write_result(junit, "bundle@x86-cpu-ort", False, "median 2.1 ms vs baseline 1.0 ms: REGRESSED <by 110 %>", 1.0)
    code, out, err = cli("report", full_run, "--junit", junit, "--json")
    assert code == 0, err
    path = Path(json.loads(out)["report"])
    assert path == full_run / "report.html"
    first = path.read_bytes()
    assert cli("report", full_run, "--junit", junit, "--out", tmp_path / "again.html")[0] == 0
    assert (tmp_path / "again.html").read_bytes() == first  # nothing in it depends on when it was made
    page = in_browser(path, {"chart-progress", "chart-pareto", "chart-layers", "chart-validation"})
    text = page.facts["text"]
    assert HOSTILE in text  # the class name as text, not as markup
    assert "REGRESSED <by 110 %>" in text and "onnxruntime" in text and "verified" in text
    summary = json.loads((full_run / "search" / "summary.json").read_text())
    assert summary["evaluations"] == 3 and all(r["arch"] in text for r in summary["pareto"])
    layers = next(c for c in page.facts["charts"] if c["id"] == "chart-layers")
    assert layers["rows"] >= 3  # stem, the chosen layers, head


def test_a_run_report_says_what_is_missing_and_a_missing_run_is_one_error_line(classify_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(classify_run[0], run, ignore=shutil.ignore_patterns("validate"))
    code, _, err = cli("report", run)
    assert code == 0, err
    text = (run / "report.html").read_text()
    assert "holds no evaluation: run `pathnas-edge search`" in text and "run `pathnas-edge validate`" in text
    code, _, err = cli("report", tmp_path / "nothing")
    assert code == 2 and err.startswith("error: run directory") and "Traceback" not in err


@needs_browser
def test_a_tabular_llm_search_report_shows_random_search_the_prompt_and_the_rejections(bench, server_factory,
                                                                                     tmp_path, monkeypatch):
    from test_search_llm import budget_with_some_over, proposal

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-report")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    budget, over, within = budget_with_some_over(bench)
    others = [c for c, r in bench["rows"].items() if r["connected"] and r["lat_ms_edge_a"] < budget and c != within][:2]
    server = server_factory([{"reply": proposal(over, "<script>alert(2)</script> wider")},  # over the budget
                             *({"reply": proposal(c)} for c in (within, *others))])
    run = tmp_path / "search"
    search(SearchSettings(space="nb201", benchmark=bench["path"], dataset="tissue", device="edge_a", run_dir=run,
                          proposer="llm", llm_base_url=server.url, llm_backoff_s=0.0, llm_timeout_s=5.0, iterations=3,
                          budget_ms=budget))
    code, out, err = cli("report", run, "--json")
    assert code == 0, err
    page = in_browser(Path(json.loads(out)["report"]), {"chart-progress", "chart-pareto"})
    text = page.facts["text"]
    assert "random search on the same benchmark" in text  # the band, from the same file, budget and device
    assert "<script>alert(2)</script> wider" in text  # the LLM's reply, as text
    assert over in text and "refused before evaluation" in text


# -- a slide batch's report ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_bundle(bundle, tmp_path_factory):
    """The shared bundle with a class renamed to markup, its manifest and WSInfer config agreeing (unsigned)."""
    copy = copy_bundle(bundle, tmp_path_factory.mktemp("hostile") / "bundle")
    classes = json.loads((copy / "labels.json").read_text())
    classes[0] = HOSTILE
    (copy / "labels.json").write_text(json.dumps(classes))
    sync_config(copy, classes)
    rehash(copy, lambda manifest: manifest.update(classes=classes))
    return copy


@needs_browser
def test_a_slide_batch_writes_its_report_at_the_end_and_it_opens_in_a_browser(hostile_bundle, tmp_path, monkeypatch):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(2):
        write_slide(slides / f"s{i}.tif", side=512, tile=128, tissue=0.3 * (i + 1))
    (slides / "broken.tif").write_bytes(b"not a slide")
    out = tmp_path / "out"
    code, err = run_infer_here(hostile_bundle, slides, "--out", out)
    assert code == 1 and f"report {out / 'report.html'}" in err  # one input failed; the report names it
    first = (out / "report.html").read_bytes()
    page = in_browser(out / "report.html", {"chart-probabilities", "chart-tiles"})
    text = page.facts["text"]
    assert HOSTILE in text and "broken.tif" in text and "not a readable TIFF" in text
    assert len(page.facts["images"]) == 4  # each slide's thumbnail (tissue in class colours) and its heatmap
    result = infer("report", out)  # made again, by the toolkit with torch blocked: the same file
    assert result.returncode == 0, result.stderr
    assert (out / "report.html").read_bytes() == first
    allowed = requirement_closure(declared_requirements(("runtime",))) | {"pathnas-edge"}
    assert imported_distributions(result) <= allowed  # the base install's Jinja2, no matplotlib
    # a folder moved elsewhere keeps its pictures: they are found under OUT where the batch wrote them
    moved = Path(shutil.move(out, tmp_path / "moved"))
    assert run_infer_here("report", moved)[0] == 0
    assert sum(image["loaded"] for image in in_browser(moved / "report.html", set()).facts["images"]) == 4
    # a large batch: the cards and chart bars of the first inputs only, the tables of all (the file stays small)
    from pathnas.deploy import slide_report

    monkeypatch.setattr(slide_report, "MAX_PICTURES", 1)
    assert run_infer_here("report", moved)[0] == 0
    capped = (moved / "report.html").read_text()
    assert capped.count('<article class="slide"') == 1 and "the figures of all 2" in capped
    assert 'data-slide="s1.tif"' not in capped and "s1.tif</td>" in capped  # no card for s1; its figures are there


def test_the_slide_report_command_names_a_folder_that_is_not_a_batch(tmp_path):
    code, err = run_infer_here("report", tmp_path)
    assert code == 2 and "neither run_metadata.json nor results.csv" in err


def test_a_blank_slide_is_shown_and_listed_among_the_failures_as_the_exit_code_counts_it(tmp_path):
    from pathnas.deploy.slide_report import batch_context

    rows = [{"input": "a.tif", "status": "ok", "prediction": "tumor", "prob_tumor": 0.9},
            {"input": "blank.tif", "status": "no_tissue", "prediction": "",
             "error": "blank.tif: no tissue found: all 16 tiles are background"},
            {"input": "broken.tif", "status": "error", "error": "broken.tif: truncated"}]
    context = batch_context(tmp_path, {"results": rows, "classes": ["tumor"]})
    assert [card["input"] for card in context["cards"]] == ["a.tif", "blank.tif"]  # what was scanned is shown
    assert [name for name, _ in context["failures"]] == ["blank.tif", "broken.tif"]
    assert context["subtitle"][0].startswith("3 input(s): 1 done, 2 failed")
