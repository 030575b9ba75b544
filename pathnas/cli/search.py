"""`pathnas-edge search --device jetson ...`: hardware-aware architecture search."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pathnas.settings import SearchSettings

from .common import JSON_HELP, build, console, err_console, on_interrupt, print_json, setting

S = SearchSettings


def search(
    device: str = typer.Option(..., help="target hardware profile (name or alias), e.g. jetson, cpu"),
    supernet: Path = typer.Option(..., help="pretrained supernet checkpoint"),
    data: Path = typer.Option(..., help="the data set (its saved splits are reused)"),
    space: Optional[str] = setting(S, "space"),
    budget_ms: Optional[float] = setting(S, "budget_ms", help="latency budget on the device, ms per image"),
    budget_mflops: Optional[float] = setting(S, "budget_mflops", help="FLOPs budget in MFLOPs (fvcore multiply-adds)"),
    iterations: int = setting(S, "iterations"),
    proposer: str = setting(S, "proposer", help="llm, llm-rank, evolution, random or auto"),
    llm_model: str = setting(S, "llm_model"),
    llm_base_url: Optional[str] = setting(S, "llm_base_url", help="OpenAI-compatible server (overrides OPENAI_BASE_URL)"),
    temperature: float = setting(S, "temperature"),
    prompt: str = setting(S, "prompt", help="system prompt: expert, generic or none"),
    llm_timeout: float = setting(S, "llm_timeout_s", help="seconds per LLM request"),
    llm_retries: int = setting(S, "llm_retries", help="retries of a failed LLM request"),
    llm_backoff: float = setting(S, "llm_backoff_s"),
    finetune_epochs: int = setting(S, "finetune_epochs", help="fine-tune each path N epochs before evaluating "
                                                                "(the paper: 20)"),
    bn_images: int = setting(S, "bn_images"),
    latency_source: str = setting(S, "latency_source", help="table (measured on the device) or roofline (an estimate)"),
    latency_table: Optional[Path] = setting(S, "latency_table", help="an explicit latency table file"),
    run_dir: Path = typer.Option(Path("runs/search"), help="where the transcript, evaluations and summary go"),
    resume: bool = typer.Option(False, "--resume", help="continue a crashed search without re-evaluating"),
    replay: Optional[Path] = setting(S, "replay", help="replay the LLM replies of a transcript (no network)"),
    seed: int = setting(S, "seed"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """LLM-driven, hardware-aware architecture search on a pretrained supernet."""
    from pathnas.pipeline.stages import latency_factory
    from pathnas.search import run_search

    settings = build(
        SearchSettings, device=device, supernet=supernet, data=data, run_dir=run_dir, space=space, budget_ms=budget_ms,
        budget_mflops=budget_mflops, iterations=iterations, proposer=proposer, llm_model=llm_model,
        llm_base_url=llm_base_url, temperature=temperature, prompt=prompt, llm_timeout_s=llm_timeout,
        llm_retries=llm_retries, llm_backoff_s=llm_backoff, finetune_epochs=finetune_epochs, bn_images=bn_images,
        latency_source=latency_source, latency_table=latency_table, resume=resume, replay=replay, seed=seed,
    )
    on_interrupt(f"every finished evaluation is saved in {run_dir / 'evaluations.jsonl'}; continue with the same "
                 f"command and --resume")
    summary = run_search(settings, latency_factory(settings))
    if as_json:
        print_json(summary)
    else:
        print_summary(summary, run_dir)
    if summary["status"] != "completed":
        err_console.print(f"[red]search stopped:[/red] {summary['reason']} (everything so far is in {run_dir})",
                          markup=True, highlight=False)
        raise typer.Exit(3)


def print_summary(summary: dict, run_dir: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from pathnas.io import read_jsonl

    est = "~" if summary["device"]["is_estimate"] else ""
    table = Table(title=f"search on {summary['device']['device']}: {summary['evaluations']} evaluations, "
                        f"proposer {summary['proposer']}", title_justify="left")
    metric = summary["best"]["metric_name"] if summary["best"] else "metric"
    for col in ("#", "arch", metric, f"{est}ms", "MFLOPs", "params", "budgets", "front"):
        table.add_column(col, overflow="fold")
    front = {r["arch"] for r in summary["pareto"]}
    for r in read_jsonl(run_dir / "evaluations.jsonl"):
        style = "bold green" if summary["best"] and r["arch"] == summary["best"]["arch"] else None
        table.add_row(str(r["iteration"]), r["arch"], f"{r['metric']:.2f}", f"{r['latency_ms']:.4g}",
                      f"{r['flops'] / 1e6:.2f}", f"{r['params']:,}", "met" if r["meets_budgets"] else "missed",
                      "*" if r["arch"] in front else "", style=style)
    console.print(table)
    if summary["device"]["is_estimate"]:
        console.print("~ latency is a roofline ESTIMATE, not a measurement", markup=False)
    if summary["best"]:
        console.print(f"best: [bold]{escape(summary['best']['arch'])}[/bold] "
                      f"({escape(summary['best']['arch_explicit'])}); summary {escape(str(run_dir / 'summary.json'))}, "
                      f"plot {escape(str(run_dir / 'pareto.png'))}")
    else:
        console.print("[yellow]no evaluated architecture met every budget[/yellow]")


COMMANDS = (search,)
