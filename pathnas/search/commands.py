"""CLI: `pathnas-edge search --device jetson ...`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(search)


def search(
    device: str = typer.Option(..., help="target hardware profile (name or alias), e.g. jetson, cpu"),
    supernet: Path = typer.Option(..., help="pretrained supernet checkpoint"),
    data: Path = typer.Option(..., help="the data set (its saved splits are reused)"),
    space: Optional[str] = typer.Option(None, help="must agree with the checkpoint when given"),
    budget_ms: Optional[float] = typer.Option(None, help="latency budget on the device, ms per image"),
    budget_mflops: Optional[float] = typer.Option(None, help="FLOPs budget in MFLOPs (fvcore multiply-adds)"),
    iterations: int = typer.Option(10, min=1),
    proposer: str = typer.Option("auto", help="llm, llm-rank, evolution, random or auto"),
    llm_model: str = typer.Option("gpt-4o"),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server (overrides OPENAI_BASE_URL)"),
    temperature: float = typer.Option(0.0),
    prompt: str = typer.Option("expert", help="system prompt: expert, generic or none"),
    llm_timeout: float = typer.Option(60.0, help="seconds per LLM request"),
    finetune_epochs: int = typer.Option(0, help="fine-tune each path N epochs before evaluating (the paper: 20)"),
    bn_images: int = typer.Option(256),
    latency_source: str = typer.Option("table", help="table (measured on the device) or roofline (an estimate)"),
    latency_table: Optional[Path] = typer.Option(None, help="an explicit latency table file"),
    run_dir: Path = typer.Option(Path("runs/search"), help="where the transcript, evaluations and summary go"),
    resume: bool = typer.Option(False, "--resume", help="continue a crashed search without re-evaluating"),
    replay: Optional[Path] = typer.Option(None, help="replay the LLM replies of a transcript (no network)"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """LLM-driven, hardware-aware architecture search on a pretrained supernet."""
    from rich.table import Table

    from pathnas.cli import console

    from .loop import SearchSettings, run_search

    settings = SearchSettings(
        device=device, supernet=supernet, data=data, run_dir=run_dir, space=space, budget_ms=budget_ms,
        budget_mflops=budget_mflops, iterations=iterations, proposer=proposer, llm_model=llm_model,
        llm_base_url=llm_base_url, temperature=temperature, prompt=prompt, llm_timeout_s=llm_timeout,
        finetune_epochs=finetune_epochs, bn_images=bn_images, latency_source=latency_source,
        latency_table=latency_table, resume=resume, replay=replay, seed=seed,
    )
    summary = run_search(settings)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        est = " (roofline estimate)" if summary["device"]["is_estimate"] else ""
        table = Table(title=f"search on {summary['device']['device']}: {summary['evaluations']} evaluations, "
                            f"proposer {summary['proposer']}")
        for col in ("#", "arch", summary["best"]["metric_name"] if summary["best"] else "metric",
                    f"latency ms{est}", "MFLOPs", "params", "budgets", "Pareto"):
            table.add_column(col)
        front = {r["arch"] for r in summary["pareto"]}
        from pathnas.io import read_jsonl

        for r in read_jsonl(run_dir / "evaluations.jsonl"):
            style = "bold green" if summary["best"] and r["arch"] == summary["best"]["arch"] else None
            table.add_row(str(r["iteration"]), r["arch"], f"{r['metric']:.2f}", f"{r['latency_ms']:.4f}",
                          f"{r['flops'] / 1e6:.2f}", f"{r['params']:,}", "met" if r["meets_budgets"] else "missed",
                          "*" if r["arch"] in front else "", style=style)
        console.print(table)
        if summary["best"]:
            console.print(f"best: [bold]{summary['best']['arch']}[/bold] ({summary['best']['arch_explicit']}); "
                          f"summary {run_dir / 'summary.json'}, plot {run_dir / 'pareto.png'}")
        else:
            console.print("[yellow]no evaluated architecture met every budget[/yellow]")
    if summary["status"] != "completed":
        from pathnas.cli import err_console

        err_console.print(f"[red]search stopped:[/red] {summary['reason']} (everything so far is in {run_dir})")
        raise typer.Exit(3)
