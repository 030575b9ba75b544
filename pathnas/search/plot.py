"""The Pareto plot of a search: accuracy against latency on the device, the budget and the best marked."""
from __future__ import annotations

from pathlib import Path


def latency_label(summary: dict) -> str:
    """The latency axis's label: the device, and whether its figures are measured, predicted or estimated."""
    device = summary["device"]
    kind = ("roofline ESTIMATE" if device.get("is_estimate") else
            "measured" if device.get("column") else "predicted from measured table")
    return f"latency on {device['device']} (ms, {kind})"


def draw_pareto(ax, history: list[dict], summary: dict) -> None:
    """Every evaluation (meets / misses the budgets), the Pareto front, the best and the latency budget on ``ax``
    (the search's pareto.png and the run's report draw the same picture)."""
    ok = [r for r in history if r["meets_budgets"]]
    miss = [r for r in history if not r["meets_budgets"]]
    ax.scatter([r["latency_ms"] for r in ok], [r["metric"] for r in ok], c="tab:blue", label="meets budgets")
    ax.scatter([r["latency_ms"] for r in miss], [r["metric"] for r in miss], c="tab:gray", marker="x",
               label="misses budgets")
    front = summary["pareto"]
    ax.plot([r["latency_ms"] for r in front], [r["metric"] for r in front], "-o", c="tab:orange", label="Pareto front")
    if summary["best"]:
        ax.scatter([summary["best"]["latency_ms"]], [summary["best"]["metric"]], s=160, facecolors="none",
                   edgecolors="tab:red", label=f"best {summary['best']['arch']}")
    if summary["budgets"]["latency_ms"]:
        ax.axvline(summary["budgets"]["latency_ms"], ls="--", c="tab:red", label="latency budget")
    ax.set_xlabel(latency_label(summary))
    ax.set_ylabel(history[0]["metric_name"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_pareto(history: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathnas.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4.2))
    draw_pareto(ax, history, summary)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
