"""`pathnas-edge report RUN`: a run directory as one HTML file people look at (RUN/report.html).

The pipeline writes it at its end; the command writes it from whatever a run holds (a run stopped
after its search has a report of its search). It reads the run's files only, tolerantly: a file
that is missing makes its section say which file and which command makes it.

- Search: accuracy (inherited weights) per iteration with the best so far, and for a tabular
  benchmark the band random search reaches on the same benchmark; every proposal on accuracy x
  latency on the device with the Pareto front, the budget and the chosen path; what was rejected
  and why; the proposer, and for an LLM the prompt and reply of its first call.
- The chosen model: its layers, each with its latency on the device from the table the search used
  (bars, as AI Hub's per-layer profile), FLOPs and parameters; input size, µm/px, retraining.
- Validation: every artifact against PyTorch; INT8's accuracy control and which INT8 shipped, and why.
- Bundle: device, signer, hashes, the latency baseline; `regress` verdicts from JUnit files and
  workstation baselines handed to the command.

Charts are matplotlib's, as inline SVG (text as text, so a chart costs a few tens of KB and the
demo's report stays small); every chart has its figures in a table beside it. The page itself,
its escaping and inlining are deploy/html.py's, shared with the slide batch's report. A report made
twice from the same run is the same file (``svg.hashsalt`` fixed, no dates in the SVG).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

from pathnas.deploy import html
from pathnas.errors import UserError
from pathnas.io import read_json, read_jsonl

from .layout import RunLayout

log = logging.getLogger("pathnas.pipeline")

TEMPLATE = "run_report.html.j2"
# How many random searches the band of a tabular benchmark is drawn from (seeds 0..N-1).
RANDOM_RUNS = 50
FIGSIZE = (6.4, 4.0)


# -- reading the run, tolerantly -------------------------------------------------------------------

def _json(path: Path, what: str):
    """A file of the run, or None when it is not there; a damaged one is reported and skipped."""
    if not path.is_file():
        return None
    try:
        return read_json(path, what)
    except UserError as err:
        log.warning("report: %s", err)
        return None


def search_folder(layout: RunLayout) -> Path:
    """RUN/search for a pipeline's run; RUN itself for a search run on its own (`pathnas-edge search`)."""
    from pathnas.search.runfile import EVALUATIONS_FILE

    return layout.root if (layout.root / EVALUATIONS_FILE).is_file() else layout.search_dir


# -- charts ------------------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=FIGSIZE)


def _svg(fig, name: str):
    """The figure as inline SVG: text kept as text (small), ids salted with the chart's name (unique in the
    page, the same every time), no date."""
    import matplotlib
    import matplotlib.pyplot as plt

    out = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"pathnas-{name}", "svg.fonttype": "none"}):
        fig.tight_layout()
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return html.inline_svg(out.getvalue())


def _best_so_far(history: list[dict]) -> list[float | None]:
    best, out = None, []
    for r in history:
        if r["meets_budgets"] and (best is None or r["metric"] > best):
            best = r["metric"]
        out.append(best)
    return out


def progress_chart(history: list[dict], band: dict | None):
    fig, ax = _figure()
    x = [r["iteration"] for r in history]
    if band:
        n = range(len(band["median"]))
        ax.fill_between(n, band["low"], band["high"], color="tab:gray", alpha=0.25, step="post",
                        label=f"random search, {band['runs']} runs (10-90 %)")
        ax.step(n, band["median"], where="post", c="tab:gray", lw=1, label="random search, median")
    ok = [r for r in history if r["meets_budgets"]]
    miss = [r for r in history if not r["meets_budgets"]]
    ax.scatter([r["iteration"] for r in ok], [r["metric"] for r in ok], c="tab:blue", label="meets budgets", zorder=3)
    ax.scatter([r["iteration"] for r in miss], [r["metric"] for r in miss], c="tab:gray", marker="x",
               label="misses budgets", zorder=3)
    best = _best_so_far(history)
    ax.step(x, [b if b is not None else float("nan") for b in best], where="post", c="tab:red",
            label="best so far (meets budgets)")
    ax.set_xlabel("iteration")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{history[0]['metric_name']} (inherited weights)" if not band else history[0]["metric_name"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig, "progress")


def pareto_chart(history: list[dict], summary: dict, chosen: str | None):
    from pathnas.search.plot import draw_pareto

    fig, ax = _figure()
    draw_pareto(ax, history, summary)
    shipped = next((r for r in history if r["arch"] == chosen), None)
    if shipped is not None and (not summary["best"] or shipped["arch"] != summary["best"]["arch"]):
        ax.scatter([shipped["latency_ms"]], [shipped["metric"]], s=220, marker="*", c="tab:green",
                   label=f"extracted {chosen}", zorder=4)
        ax.legend(fontsize=8)
    return _svg(fig, "pareto")


def layers_chart(layers: list[dict]):
    fig, ax = _figure()
    fig.set_size_inches(FIGSIZE[0], max(2.5, 0.28 * len(layers) + 1))
    names = [row["name"] for row in layers][::-1]
    ax.barh(names, [row["median_ms"] for row in layers][::-1], color="tab:blue")
    ax.set_xlabel("median latency on the device (ms, from the table)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "layers")


def validation_chart(rows: list[dict]):
    timed = [r for r in rows if r.get("latency_p50_ms") is not None]
    fig, ax = _figure()
    fig.set_size_inches(FIGSIZE[0], max(2.2, 0.45 * len(timed) + 1))
    colours = {"passed": "tab:green", "reference": "tab:blue"}
    names = [f"{r['backend']} {r['precision']}" for r in timed]
    ax.barh(names[::-1], [r["latency_p50_ms"] for r in timed][::-1],
            color=[colours.get(r["status"], "tab:red") for r in timed][::-1])
    for i, r in enumerate(timed[::-1]):
        agreement = r.get("top1_agreement_pct")
        if agreement is not None:
            ax.text(r["latency_p50_ms"], i, f"  {agreement:.1f} % agree", va="center", fontsize=8)
    ax.set_xscale("log")  # PyTorch eager is often 100x a runtime's latency: a linear axis would hide the runtimes
    ax.set_xlabel("latency p50 at batch 1 on this machine (ms, log scale)")
    ax.margins(x=0.35)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "validation")


# -- sections ------------------------------------------------------------------------------------------

def random_band(summary: dict, iterations: int, runs: int = RANDOM_RUNS) -> dict | None:
    """For a search of a tabular benchmark: the best-so-far accuracy of ``runs`` random searches (our random
    proposer, seeds 0..runs-1) on the same benchmark, budgets and device, as 10/50/90 % quantiles per
    iteration. None when the run is not a tabular search or its benchmark is not here."""
    import numpy as np

    from pathnas.search import Budgets, NoProposal, RandomProposer, Search
    from pathnas.search.tabular import BenchmarkLatency, TabularTarget

    space = summary.get("search_space") or {}
    if space.get("kind") != "tabular" or not Path(str(space.get("benchmark"))).is_file():
        return None
    target = TabularTarget(space["benchmark"], space["space"], space["dataset"], summary["device"]["device"])
    budgets = Budgets(summary["budgets"].get("latency_ms"), summary["budgets"].get("mflops"))
    curves = []
    for seed in range(runs):
        search, proposer = Search(target, BenchmarkLatency(target.table), budgets, seed=seed), RandomProposer(seed)
        for _ in range(iterations):
            try:
                search.evaluate(proposer.propose(search.ctx), proposer.name)
            except NoProposal:
                break
        best = [b if b is not None else np.nan for b in _best_so_far(search.ctx.history)]
        curves.append(best + [best[-1] if best else np.nan] * (iterations - len(best)))
    values = np.array(curves, dtype=float)
    low, median, high = (np.nanpercentile(values, q, axis=0) for q in (10, 50, 90))
    return {"runs": runs, "low": low.tolist(), "median": median.tolist(), "high": high.tolist()}


def _first_prompt(folder: Path) -> dict | None:
    """The first LLM call of the search: its messages and reply (or error), as recorded (already redacted)."""
    from pathnas.search.runfile import TRANSCRIPT_FILE

    path = folder / TRANSCRIPT_FILE
    calls = [r for r in read_jsonl(path) if r.get("type") == "llm_call"] if path.is_file() else []
    if not calls:
        return None
    call = calls[0]
    messages = [(str(m.get("role", "")), str(m.get("content", ""))) for m in call.get("messages") or []
                if isinstance(m, dict)]
    return {"iteration": call.get("iteration"), "model": call.get("model"), "messages": messages,
            "reply": call.get("reply"), "error": call.get("error")}


def _rejections(folder: Path, history: list[dict]) -> list[list]:
    """Proposals refused before evaluation (LLM proposers record them) and evaluations that missed the budgets."""
    from pathnas.search.runfile import TRANSCRIPT_FILE

    path = folder / TRANSCRIPT_FILE
    entries = [r for r in read_jsonl(path) if r.get("type") == "rejected"] if path.is_file() else []
    rows = [[r.get("iteration"), r.get("arch"), "refused before evaluation", r.get("verdict") or r.get("problem")]
            for r in entries]
    rows += [[r["iteration"], r["arch"], "evaluated", r["verdict"]] for r in history if not r["meets_budgets"]]
    return sorted(rows, key=lambda row: (row[0] if isinstance(row[0], int) else -1, row[2]))


def search_section(layout: RunLayout, chosen: str | None) -> dict:
    from pathnas.search.runfile import EVALUATIONS_FILE, SUMMARY_FILE, read_evaluations

    folder = search_folder(layout)
    summary = _json(folder / SUMMARY_FILE, "search summary")
    history = read_evaluations(folder / EVALUATIONS_FILE) if (folder / EVALUATIONS_FILE).is_file() else []
    if not history:
        return {"missing": f"{folder / EVALUATIONS_FILE} holds no evaluation: run `pathnas-edge search` (or the "
                           f"pipeline)"}
    if summary is None:
        return {"missing": f"{folder / SUMMARY_FILE} is missing: the search has not finished (`pathnas-edge search "
                           f"--resume` finishes it)"}
    band = random_band(summary, summary.get("iterations") or len(history))
    best = summary.get("best")
    metric = history[0]["metric_name"]
    measured = any(r.get("measured_latency_ms") is not None for r in history)  # this machine was the device
    choice = summary.get("proposer_choice") or {}
    llm = summary.get("llm") or {}
    device = summary.get("device") or {}
    return {
        "progress": progress_chart(history, band), "pareto": pareto_chart(history, summary, chosen),
        "metric": metric, "band": band is not None,
        "progress_rows": [[r["iteration"], r["arch"], r.get("proposer", ""), r["metric"], r["latency_ms"],
                           *([r.get("measured_latency_ms")] if measured else []), round(r["flops"] / 1e6, 3),
                           r["verdict"]] for r in history],
        "progress_columns": ["iteration", "architecture", "proposer", metric, "latency ms",
                             *(["measured here ms"] if measured else []), "MFLOPs", "verdict"],
        "pareto_rows": [[r["arch"], r["metric"], r["latency_ms"], round(r["flops"] / 1e6, 3),
                         "best" if best and r["arch"] == best["arch"] else ""] for r in summary.get("pareto", [])],
        "rejected": _rejections(folder, history),
        "facts": [("status", summary.get("status")), ("stopped", summary.get("reason")),
                  ("proposer", summary.get("proposer")), ("why this proposer", choice.get("why")),
                  ("evaluations", summary.get("evaluations")),
                  ("best", f"{best['arch']}: {metric} {html.number(best['metric'])}" if best else "none met the budgets"),
                  ("budgets", ", ".join(f"{k} ≤ {html.number(v)}" for k, v in (summary.get("budgets") or {}).items()
                                        if v is not None) or "none"),
                  ("device", device.get("device")), ("latency source", device.get("source")),
                  ("latency note", device.get("note")), ("latency table", device.get("table")),
                  ("LLM calls", llm.get("calls") or None), ("LLM tokens (prompt / completion)",
                   f"{llm.get('prompt_tokens')} / {llm.get('completion_tokens')}" if llm.get("calls") else None),
                  ("LLM cost estimate (USD)", llm.get("cost_usd_estimate")),
                  ("iterations the fallback proposed", llm.get("fallback_iterations") or None)],
        "prompt": _first_prompt(folder),
        "summary": summary, "history": history,
    }


def _layer_name(part, position: dict[int, str]) -> str:
    kind = part.key.split("@", 1)[0].split(".", 1)[-1]
    if part.requires:
        pos = part.requires[0][0]
        return f"{position.get(pos, pos)}: {kind}"
    return kind


def layers(summary: dict, arch: str) -> tuple[list[dict], dict]:
    """The chosen path's parts in order, each with its median latency on the device from the table the search
    used, its FLOPs and parameters; and the table's facts. Empty when the table is not here (an estimate
    has no measured layers)."""
    from pathnas.cost import measure_cost
    from pathnas.profiling.tables import load_table
    from pathnas.spaces import build_supernet, config_from_dict

    device = summary.get("device") or {}
    table_path = device.get("table")
    if device.get("is_estimate") or not table_path or not Path(table_path).is_file() or not summary.get("space_config"):
        return [], {}
    table = load_table(table_path)
    supernet = build_supernet(config_from_dict(summary["space_config"]))
    parts = supernet.parts_for(arch)
    fixed = [p for p in parts if not p.requires]
    ordered = fixed[:1] + sorted((p for p in parts if p.requires), key=lambda p: p.requires[0][0]) + fixed[1:]
    position = {i: d.name for i, d in enumerate(supernet.space.decisions)}
    out = []
    for part in ordered:
        measured = table["parts"].get(part.key, {})
        cost = measure_cost(part.build(), part.input_shape)
        out.append({"name": _layer_name(part, position), "key": part.key, "median_ms": measured.get("median_ms"),
                    "flops": cost.flops, "params": cost.params})
    total = sum(r["median_ms"] or 0 for r in out)
    for r in out:
        r["share_pct"] = 100 * (r["median_ms"] or 0) / total if total else None
    overhead = table.get("overhead") or {}
    return out, {"table": str(table_path), "sum_ms": total, "scale": overhead.get("scale"),
                 "offset_ms": overhead.get("offset_ms"), "measured_on": (table.get("metadata") or {}).get("cpu_model"),
                 "measured_at": (table.get("metadata") or {}).get("date")}


def model_section(layout: RunLayout, search: dict) -> dict:
    export = _json(layout.export_record, "export record") or {}
    preprocess = _json(layout.preprocess, "preprocessing record") or export.get("preprocess") or {}
    retrain = _json(layout.retrain_summary, "retrain summary")
    summary = search.get("summary") or {}
    arch = export.get("arch") or (retrain or {}).get("arch") or ((summary.get("best") or {}).get("arch"))
    if arch is None:
        return {"missing": "no model was chosen yet: the search found none that meets the budgets, or has not run"}
    record = next((r for r in search.get("history", []) if r["arch"] == arch), {})
    parts, table = layers(summary, arch) if summary else ([], {})
    dataset = export.get("dataset") or {}
    facts = [("architecture", arch), ("task", export.get("task")),
             ("input size", f"{preprocess['input_size']} px" if preprocess.get("input_size") else None),
             ("training images", f"{preprocess.get('image_px')} px" if preprocess.get("image_px") else None),
             ("resolution", f"{html.number(preprocess['mpp'], 3)} µm/px" if preprocess.get("mpp") else
              "not recorded (the data set states none)"),
             ("FLOPs (multiply-adds)", record.get("flops")), ("parameters", record.get("params")),
             ("latency on the device (predicted)", html.milliseconds(record.get("latency_ms"))),
             (f"{record.get('metric_name', 'metric')} with inherited weights", record.get("metric")),
             ("classes", ", ".join(map(str, dataset.get("classes") or [])) or None)]
    if retrain:
        key = retrain.get("metric_name", "metric")
        facts += [("retrained", f"{retrain.get('epochs')} epochs" + (" from scratch" if retrain.get("from_scratch")
                                                                      else " from the supernet's weights")),
                  (f"retrained val {key}", (retrain.get("val") or {}).get(key)),
                  (f"retrained test {key}", (retrain.get("test") or {}).get(key))]
    return {"facts": facts, "layers": parts, "table": table, "arch": arch,
            "chart": layers_chart(parts) if any(p["median_ms"] is not None for p in parts) else None,
            "layer_rows": [[p["name"], p["key"].rpartition("@")[2], p["median_ms"], p["share_pct"], p["flops"],
                            p["params"]] for p in parts]}


VALIDATION_COLUMNS = ["backend", "precision", "status", "reason", "agreement %", "cosine", "max |Δ|", "metric", "Δ metric",
                      "p50 ms", "p90 ms", "size MB", "provider"]


def validation_section(layout: RunLayout) -> dict:
    report = _json(layout.report, "validation report")
    if report is None:
        return {"missing": f"{layout.report} is missing: run `pathnas-edge validate` (or the pipeline)"}
    rows = report.get("rows") or []
    table = [[r.get("backend"), r.get("precision"), r.get("status"), r.get("reason") or "",
              r.get("top1_agreement_pct"), None if r.get("cosine") is None else f"{r['cosine']:.7f}",  # vs 0.99999
              r.get("max_abs_diff"), r.get("metric"), r.get("metric_delta"),
              r.get("latency_p50_ms"), r.get("latency_p90_ms"), r.get("size_mb"), r.get("device") or ""] for r in rows]
    calibration = _json(layout.calibration_record, "calibration record")
    int8 = []
    for runtime, record in sorted(((calibration or {}).get("runtimes") or {}).items()):
        control = record.get("accuracy_control") or {}
        int8.append({"runtime": runtime, "file": record.get("file"), "float_nodes": record.get("float_nodes") or [],
                     "size_ratio": record.get("size_ratio"), "passed": control.get("passed"),
                     "reason": control.get("reason"),
                     "steps": [[s.get("action"), s.get("node") or "", s.get("float_nodes"), s.get("size_ratio"),
                                s.get("top1_agreement_pct"), s.get("metric_delta"), "passed" if s.get("passed") else
                                "failed"] for s in control.get("steps") or []]})
    return {"rows": table, "columns": VALIDATION_COLUMNS,
            "chart": validation_chart(rows) if any(r.get("latency_p50_ms") is not None for r in rows) else None,
            "chart_rows": [[f"{r['backend']} {r['precision']}", r.get("latency_p50_ms"), r.get("top1_agreement_pct"),
                            r.get("status")] for r in rows if r.get("latency_p50_ms") is not None],
            "facts": [("images", f"{report.get('images')} ({report.get('split')} split)"),
                      ("overall", "passed" if report.get("passed") else "FAILED"),
                      ("thresholds", "; ".join(f"{p}: " + ", ".join(f"{k} {v}" for k, v in t.items())
                                               for p, t in (report.get("thresholds") or {}).items()))],
            "notes": report.get("notes") or [], "int8": int8,
            "versions": sorted((report.get("versions") or {}).items())}


def _junit_cases(path: Path) -> list[list]:
    """The test cases of a JUnit file (a `regress --junit` report), parsed with defusedxml: it is data."""
    from defusedxml import ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as err:
        return [[str(path), "", "unreadable", f"{type(err).__name__}: {err}"]]
    cases = []
    for case in root.iter("testcase"):
        failure, error = case.find("failure"), case.find("error")
        verdict = "failed" if failure is not None else "error" if error is not None else "passed"
        text = (failure if failure is not None else error if error is not None else case.find("system-out"))
        cases.append([path.name, case.get("name", ""), verdict, (text.text or "").strip() if text is not None else ""])
    return cases


def bundle_section(layout: RunLayout, junit: list[Path], baselines: list[Path]) -> dict:
    from pathnas.deploy.manifest import MANIFEST, verification_problems

    manifest = _json(layout.bundle / MANIFEST, "bundle manifest")
    regress = [case for path in junit for case in _junit_cases(Path(path))]
    others = []
    for path in baselines:
        baseline = _json(Path(path), "latency baseline")
        if baseline is not None:
            others.append([str(path), baseline.get("device"), baseline.get("model"), baseline.get("median_ms"),
                           baseline.get("p90_ms"), baseline.get("cpu_model"), baseline.get("measured_at")])
    if manifest is None:
        return {"missing": f"{layout.bundle / MANIFEST} is missing: no bundle was made (see the validation above, or "
                           f"run `pathnas-edge package`)", "regress": regress, "baselines": others}
    problems, signature = verification_problems(layout.bundle)
    profile = manifest.get("profile") or {}
    model = manifest.get("model") or {}
    baseline = manifest.get("latency_baseline") or {}
    shipped = [[a.get("backend"), a.get("precision"), a.get("path"),
                "default" if a.get("path") == model.get("default") else ""] for a in model.get("artifacts") or []]
    not_shipped = [[o.get("backend"), o.get("precision"), o.get("status"), o.get("reason") or (
                       f"not the device's runtime ({profile.get('runtime')})" if o.get("status") == "passed" else "")]
                   for o in (manifest.get("validation") or {}).get("others") or [] if o.get("status") != "reference"]
    return {
        "facts": [("device", f"{profile.get('name')}: {profile.get('description') or ''}".rstrip(": ")),
                  ("runtime / precision", f"{profile.get('runtime')} / {profile.get('precision')}"),
                  ("threads, batch", f"{profile.get('threads')}, {profile.get('batch_size')}"),
                  ("verified", "verified" if not problems else "NOT verified: " + "; ".join(problems)),
                  ("signature", signature.text if signature else None),
                  ("precision note", model.get("precision_note")), ("created", manifest.get("created_at")),
                  ("latency baseline", f"median {html.milliseconds(baseline.get('median_ms'))}, p90 "
                   f"{html.milliseconds(baseline.get('p90_ms'))} ({len(baseline.get('samples_ms') or [])} samples; "
                   f"reference model {html.milliseconds(baseline.get('reference_median_ms'))}) on "
                   f"{baseline.get('cpu_model')}" if baseline else manifest.get("latency_baseline_note"))],
        "shipped": shipped, "not_shipped": not_shipped,
        "files": sorted([name, digest] for name, digest in (manifest.get("files") or {}).items()),
        "regress": regress, "baselines": others,
    }


def run_report(run: str | Path, junit: list[Path] = (), baselines: list[Path] = ()) -> str:
    """The HTML of the run's report (see the module docstring)."""
    layout = RunLayout(Path(run))
    if not layout.root.is_dir():
        from pathnas.errors import MissingFileError

        raise MissingFileError(f"run directory {layout.root} does not exist")
    export = _json(layout.export_record, "export record") or {}
    search = search_section(layout, export.get("arch"))
    model = model_section(layout, search)
    summary = search.get("summary") or {}
    device = (summary.get("device") or {}).get("device")
    context = {
        "title": f"Run {layout.root.resolve().name}",
        "subtitle": [f"device {device}" if device else "no search yet",
                     f"model {model['arch']}" if model.get("arch") else ""],
        "source": str(layout.root), "sections": [("search", "Search"), ("model", "Chosen model"),
                                                 ("validation", "Validation"), ("bundle", "Bundle")],
        "search": search, "model": model, "validation": validation_section(layout),
        "bundle": bundle_section(layout, list(junit), list(baselines)),
    }
    return html.render(TEMPLATE, context, package=__package__)


def write_run_report(run: str | Path, out: str | Path | None = None, junit: list[Path] = (),
                     baselines: list[Path] = ()) -> Path:
    """RUN/report.html (or ``out``); returns its path."""
    return html.write_report(Path(out) if out else RunLayout(Path(run)).report_html, run_report(run, junit, baselines))
