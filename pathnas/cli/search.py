"""`pathnas-edge search`: hardware-aware architecture search, on a supernet or a tabular benchmark."""
from __future__ import annotations

from pathlib import Path

import typer

from pathnas.settings import SearchSettings

from .common import JSON_HELP, console, on_interrupt, print_json
from .options import settings_options

S = SearchSettings
SUPERNET = "Supernet spaces (shufflenet, unet, vit)"
TABULAR = f"Tabular spaces ({', '.join(S.TABULAR_SPACES)})"
LLM = "LLM proposers (llm, llm-rank)"
_PANELS = {SUPERNET: S.SUPERNET_ONLY, TABULAR: S.TABULAR_ONLY,
           LLM: ("llm_model", "llm_base_url", "llm_server", "llm_context", "temperature", "prompt", "llm_timeout_s", "llm_retries",
                 "llm_backoff_s", "replay")}
_KIND = {SUPERNET: "supernet spaces", TABULAR: "tabular spaces", LLM: "LLM proposers"}


def _search_options() -> dict[str, dict]:
    """How the search's options differ from their fields: which kind of search each belongs to (its help
    says so; an option of the other kind is refused), and a few shorter spellings."""
    options: dict[str, dict] = {
        "run_dir": {"default": Path("runs/search"), "help": "where the transcript, evaluations and summary go"},
        "resume": {"help": "continue a stopped search without re-evaluating"},
        "llm_timeout_s": {"decls": ("--llm-timeout",)},
        "llm_backoff_s": {"decls": ("--llm-backoff",)},
    }
    for panel, fields in _PANELS.items():
        for field in fields:
            described = S.model_fields[field].description or ""
            text = described if described.startswith(_KIND[panel]) else f"{_KIND[panel]}: {described}".rstrip(": ")
            options.setdefault(field, {}).update(help=text, rich_help_panel=panel)
    return options


@settings_options(SearchSettings, options=_search_options())
def search(settings: SearchSettings, as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Hardware-aware architecture search: on a pretrained supernet (--supernet, --data) or on a tabular
    benchmark (--space nb201 --benchmark FILE --dataset NAME), with an LLM or offline proposer."""
    from pathnas.pipeline.stages import latency_factory
    from pathnas.search import SearchStopped, run_search

    from pathnas.search.runfile import EVALUATIONS_FILE

    run_dir = settings.run_dir
    on_interrupt(f"every finished evaluation is saved in {run_dir / EVALUATIONS_FILE}; continue with the same "
                 f"command and --resume")
    summary = run_search(settings, latency_factory(settings))
    if as_json:
        print_json(summary)
    else:
        print_summary(summary, run_dir)
    if summary["status"] != "completed":
        # printed by the CLI as one `error:` line, never as markup (the reason may quote a server)
        raise SearchStopped(f"search stopped {summary['reason']}; everything so far is in {run_dir}: run the same "
                            f"command with --resume to continue")


def print_summary(summary: dict, run_dir: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    from pathnas.search import figures
    from pathnas.search.runfile import EVALUATIONS_FILE, PARETO_FILE, SUMMARY_FILE, read_evaluations

    device = summary["device"]
    records = read_evaluations(run_dir / EVALUATIONS_FILE)
    measured = any(r.get("measured_latency_ms") is not None for r in records)
    best = summary["best"]
    table = Table(title=f"search on {device['device']}: {summary['evaluations']} evaluations, proposer "
                        f"{summary['proposer']}", title_justify="left")
    metric = best["metric_name"] if best else (records[0]["metric_name"] if records else "metric")
    columns = ["#", "arch", metric, f"{'~' if device['is_estimate'] else ''}ms"] + (["here ms"] if measured else [])
    for col in columns + ["MFLOPs", "params", "budgets", "front"]:
        table.add_column(col, overflow="fold")
    front = {r["arch"] for r in summary["pareto"]}
    for r in records:
        style = "bold green" if best and r["arch"] == best["arch"] else None
        here = [figures.sig(r["measured_latency_ms"]) if r.get("measured_latency_ms") is not None else "-"]
        cells = [str(r["iteration"]), r["arch"], f"{r['metric']:.2f}", figures.sig(r["latency_ms"])] + \
            (here if measured else []) + [figures.mflops(r["flops"]), f"{r['params']:,}",
                                          _short_verdict(r), "*" if r["arch"] in front else ""]
        table.add_row(*(Text(c) for c in cells), style=style)  # Text: nothing recorded is read as markup
    console.print(table if records else "no architecture was evaluated", markup=False)
    if device["is_estimate"]:
        console.print("~ latency is a roofline ESTIMATE, not a measurement", markup=False)
    if device.get("anchor"):  # --reanchor: the table's figures were scaled, and by what
        console.print(f"latency: {device['note']}", markup=False, highlight=False)
    console.print(f"proposer: {summary['proposer']} ({summary['proposer_choice']['why']})", markup=False,
                  highlight=False)
    if best:
        test = (f"; {best['test_metric_name']} {best['test_metric']:.2f}" if "test_metric" in best else "")
        console.print(f"best: {best['arch']} ({best['arch_explicit']}): {best['metric_name']} {best['metric']:.2f}"
                      f"{test}, latency {figures.ms(best['latency_ms'], device['is_estimate'])}; summary "
                      f"{run_dir / SUMMARY_FILE}, plot {run_dir / PARETO_FILE}", markup=False, highlight=False)
    else:
        console.print("no evaluated architecture met every budget", markup=False, style="yellow")


def _short_verdict(record: dict) -> str:
    if record["meets_budgets"]:
        return "met"
    missed = [k for k, ok in record.get("budgets_met", {}).items() if not ok]
    return "over " + " and ".join(missed) if missed else "rejected"


COMMANDS = (search,)
