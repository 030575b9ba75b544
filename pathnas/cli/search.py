"""`pathnas-edge search`: hardware-aware architecture search, on a supernet or a tabular benchmark."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathnas.settings import SearchSettings

from .common import JSON_HELP, build, console, on_interrupt, print_json, setting

S = SearchSettings
SUPERNET = "Supernet spaces (shufflenet, unet, vit)"
TABULAR = f"Tabular spaces ({', '.join(S.TABULAR_SPACES)})"
LLM = "LLM proposers (llm, llm-rank)"


def of_kind(panel: str, field: str, *decls: str):
    """An option of one kind of search: its help says which (an option of the other kind is refused)."""
    described = S.model_fields[field].description or ""
    prefix = {SUPERNET: "supernet spaces", TABULAR: "tabular spaces", LLM: "LLM proposers"}[panel]
    text = described if described.startswith(prefix) else f"{prefix}: {described}".rstrip(": ")
    return setting(S, field, *decls, help=text, rich_help_panel=panel)


def search(
    device: str = typer.Option(..., help=S.model_fields["device"].description),
    space: Optional[str] = setting(S, "space"),
    budget_ms: Optional[float] = setting(S, "budget_ms"),
    budget_mflops: Optional[float] = setting(S, "budget_mflops"),
    iterations: int = setting(S, "iterations"),
    proposer: str = setting(S, "proposer"),
    run_dir: Path = typer.Option(Path("runs/search"), help="where the transcript, evaluations and summary go"),
    resume: bool = typer.Option(False, "--resume", help="continue a stopped search without re-evaluating"),
    seed: int = setting(S, "seed"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    supernet: Optional[Path] = of_kind(SUPERNET, "supernet"),
    data: Optional[Path] = of_kind(SUPERNET, "data"),
    finetune_epochs: int = of_kind(SUPERNET, "finetune_epochs"),
    bn_images: int = of_kind(SUPERNET, "bn_images"),
    skip_bad: bool = of_kind(SUPERNET, "skip_bad", "--skip-bad"),
    latency_source: str = of_kind(SUPERNET, "latency_source"),
    latency_table: Optional[Path] = of_kind(SUPERNET, "latency_table"),
    benchmark: Optional[Path] = of_kind(TABULAR, "benchmark"),
    dataset: Optional[str] = of_kind(TABULAR, "dataset"),
    llm_model: str = of_kind(LLM, "llm_model"),
    llm_base_url: Optional[str] = of_kind(LLM, "llm_base_url"),
    temperature: float = of_kind(LLM, "temperature"),
    prompt: str = of_kind(LLM, "prompt"),
    llm_timeout: float = of_kind(LLM, "llm_timeout_s"),
    llm_retries: int = of_kind(LLM, "llm_retries"),
    llm_backoff: float = of_kind(LLM, "llm_backoff_s"),
    replay: Optional[Path] = of_kind(LLM, "replay"),
) -> None:
    """Hardware-aware architecture search: on a pretrained supernet (--supernet, --data) or on a tabular
    benchmark (--space nb201 --benchmark FILE --dataset NAME), with an LLM or offline proposer."""
    from pathnas.pipeline.stages import latency_factory
    from pathnas.search import SearchStopped, run_search

    settings = build(
        SearchSettings, device=device, supernet=supernet, data=data, benchmark=benchmark, dataset=dataset,
        run_dir=run_dir, space=space, budget_ms=budget_ms, budget_mflops=budget_mflops, iterations=iterations,
        proposer=proposer, llm_model=llm_model, llm_base_url=llm_base_url, temperature=temperature, prompt=prompt,
        llm_timeout_s=llm_timeout, llm_retries=llm_retries, llm_backoff_s=llm_backoff,
        finetune_epochs=finetune_epochs, bn_images=bn_images, latency_source=latency_source,
        latency_table=latency_table, skip_bad=skip_bad, resume=resume, replay=replay, seed=seed,
    )
    on_interrupt(f"every finished evaluation is saved in {run_dir / 'evaluations.jsonl'}; continue with the same "
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
    from pathnas.search.runfile import read_evaluations

    device = summary["device"]
    records = read_evaluations(run_dir / "evaluations.jsonl")
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
    console.print(f"proposer: {summary['proposer']} ({summary['proposer_choice']['why']})", markup=False,
                  highlight=False)
    if best:
        test = (f"; {best['test_metric_name']} {best['test_metric']:.2f}" if "test_metric" in best else "")
        console.print(f"best: {best['arch']} ({best['arch_explicit']}): {best['metric_name']} {best['metric']:.2f}"
                      f"{test}, latency {figures.ms(best['latency_ms'], device['is_estimate'])}; summary "
                      f"{run_dir / 'summary.json'}, plot {run_dir / 'pareto.png'}", markup=False, highlight=False)
    else:
        console.print("no evaluated architecture met every budget", markup=False, style="yellow")


def _short_verdict(record: dict) -> str:
    if record["meets_budgets"]:
        return "met"
    missed = [k for k, ok in record.get("budgets_met", {}).items() if not ok]
    return "over " + " and ".join(missed) if missed else "rejected"


COMMANDS = (search,)
