"""The hardware-aware search loop (Pathology-NAS Algorithm 1, with latency fed back).

Each iteration: a proposal, validated; evaluated with inherited supernet weights after BN
recalibration (optionally fine-tuned for N epochs, as the paper does); its FLOPs, params,
predicted latency on the target device (and measured latency when that device is this
machine) and budget verdicts recorded; all of it fed back to the proposer. The best
architecture is the most accurate one that meets every budget; the Pareto front of accuracy
against latency is kept too. Everything lands in the run directory as it happens, so a
crashed search resumes without re-evaluating anything.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from pathnas.io import append_jsonl, read_jsonl, write_json_atomic

from pathnas.errors import AlreadyExistsError, ConfigError, MissingFileError

from pathnas.settings import PROPOSERS, SearchSettings

from .latency import LatencyFactory, LatencyModel
from .llm import ChatClient, LLMUnavailable, ReplayClient, Transcript
from .proposers import EvolutionProposer, LLMProposer, LLMRankProposer, NoProposal, RandomProposer, SearchContext

log = logging.getLogger("pathnas.search")



class Budgets:
    def __init__(self, latency_ms: float | None, mflops: float | None):
        self.latency_ms, self.mflops = latency_ms, mflops

    def verdicts(self, latency_ms: float, flops: int) -> dict[str, bool]:
        out = {}
        if self.latency_ms is not None:
            out["latency"] = latency_ms <= self.latency_ms
        if self.mflops is not None:
            out["flops"] = flops / 1e6 <= self.mflops
        return out

    def describe(self, label_latency) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency on the device at most {label_latency(self.latency_ms)}")
        if self.mflops is not None:
            parts.append(f"at most {self.mflops:g} MFLOPs (fvcore: one multiply-add = one flop)")
        return "; ".join(parts) or "none (maximize accuracy)"

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "mflops": self.mflops}


def pareto_front(records: list[dict]) -> list[dict]:
    """Evaluations not beaten on both accuracy (higher) and latency (lower) by another."""
    front = []
    for r in records:
        dominated = any(
            o["metric"] >= r["metric"] and o["latency_ms"] <= r["latency_ms"]
            and (o["metric"] > r["metric"] or o["latency_ms"] < r["latency_ms"])
            for o in records
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r["latency_ms"])


def space_notes(supernet) -> str:
    c = supernet.config
    if c.space == "shufflenet":
        strided, pos = [], 0
        for repeats in c.stage_repeats:
            strided.append(pos)
            pos += repeats
        return (f"Each decision is the depthwise kernel of a ShuffleNetV2 unit with squeeze-excitation. 'id' skips the "
                f"layer, except at the stride-2 layers (positions {', '.join(map(str, strided))}), where it is a 1x1 "
                f"stride-2 projection. Input {c.input_size}x{c.input_size}, width multiplier {c.width_mult}.")
    if c.space == "unet":
        return (f"Each decision is the kernel of a VGG double-conv block with squeeze-excitation (4 encoder blocks, "
                f"then 4 decoder blocks); 'id' is a 1x1 conv with BN. Input {c.input_size}x{c.input_size}.")
    return (f"Decision 0 is the depth; then for each block its number of heads (each head {c.head_width} wide) and "
            f"its MLP ratio of the {c.dim}-wide embedding. Blocks beyond the depth do not apply: write \"-\" there. "
            f"Input {c.input_size}x{c.input_size}, patch {c.patch_size}.")


def describe_dataset(data, root: Path) -> str:
    sizes = {s: len(getattr(data, s).dataset) for s in ("train", "val", "test")}
    text = (f"{data.task} into {data.num_classes} classes ({', '.join(data.classes)}); "
            f"{sizes['train']} training, {sizes['val']} validation and {sizes['test']} test images.")
    marker = root / "dataset.json"
    if marker.exists():
        description = json.loads(marker.read_text()).get("description")
        if description:
            text += f" {description}."
    return text


class Evaluator:
    """Accuracy with inherited weights (+ optional fine-tuning), cost, and latency of one path."""

    def __init__(self, supernet, data, predictor: LatencyModel, settings: SearchSettings, device: torch.device):
        from pathnas.train import primary_metric

        self.supernet, self.data, self.predictor = supernet, data, predictor
        self.settings, self.device = settings, device
        self.metric_name = primary_metric(supernet.task)
        self._flops: dict[str, tuple[int, int]] = {}

    def cost(self, arch) -> tuple[int, int]:
        from pathnas.cost import measure_cost

        if arch.code not in self._flops:
            c = measure_cost(self.supernet.extract(arch), tuple(self.supernet.example_input().shape))
            self._flops[arch.code] = (c.flops, c.params)
        return self._flops[arch.code]

    def _finetuned_metrics(self, arch) -> dict:
        from pathnas.train import OptimConfig, build_training, evaluate, recalibrate_bn, train_epoch
        from pathnas.train.distributed import DistContext

        subnet = self.supernet.extract(arch).to(self.device)
        recalibrate_bn(subnet, self.data.calib, self.settings.bn_images, self.device)
        cfg = OptimConfig(epochs=self.settings.finetune_epochs, batch_size=self.settings.batch_size, lr=0.01,
                          warmup_epochs=0, mixup_alpha=0, cutmix_alpha=0)
        parts = build_training(subnet, self.supernet.task, self.data.num_classes, cfg, len(self.data.train), self.device)
        ctx = DistContext(0, 1, 0, self.device)
        for epoch in range(cfg.epochs):
            subnet.train()
            train_epoch(lambda x, _step: subnet(x), self.data.train, parts, epoch, ctx)
        return evaluate(subnet, self.data.val, self.supernet.task, self.data.num_classes, self.device)

    def __call__(self, arch, iteration: int, proposer: str, budgets: Budgets) -> dict:
        from pathnas.train import evaluate_architecture

        start = time.perf_counter()
        if self.settings.finetune_epochs:
            metrics = self._finetuned_metrics(arch)
        else:
            metrics = evaluate_architecture(self.supernet, arch, self.data.calib, self.data.val,
                                            self.data.num_classes, self.device, self.settings.bn_images)
        flops, params = self.cost(arch)
        latency = self.predictor.predict_ms(arch)
        record = {
            "iteration": iteration, "arch": arch.code, "arch_explicit": arch.explicit(), "proposer": proposer,
            "metric_name": self.metric_name, "metric": metrics[self.metric_name], "metrics": metrics,
            "finetune_epochs": self.settings.finetune_epochs,
            "flops": flops, "params": params, "latency_ms": latency,
            "latency_source": self.predictor.source, "latency_is_estimate": self.predictor.is_estimate,
        }
        if self.settings.measure_local:
            measured = self.predictor.measure_ms(arch)
            if measured is not None:
                record["measured_latency_ms"] = measured
        verdicts = budgets.verdicts(latency, flops)
        record.update(budgets_met=verdicts, meets_budgets=all(verdicts.values()),
                      seconds=round(time.perf_counter() - start, 3))
        return record


def _make_proposer(settings: SearchSettings, transcript: Transcript):
    name = settings.proposer
    if name == "auto":
        configured = bool(settings.replay or settings.llm_base_url or os.environ.get("OPENAI_API_KEY")
                          or os.environ.get("OPENAI_BASE_URL"))
        name = "llm" if configured else "evolution"
        log.info("proposer auto: %s (%s)", name,
                 "an LLM is configured" if configured else "no OPENAI_API_KEY or base URL: offline evolution")
    if name == "random":
        return RandomProposer(settings.seed)
    if name == "evolution":
        return EvolutionProposer(settings.seed)
    if settings.replay:
        client = ReplayClient(settings.replay, transcript)
    else:
        client = ChatClient(settings.llm_model, settings.llm_base_url, temperature=settings.temperature,
                            timeout_s=settings.llm_timeout_s, max_retries=settings.llm_retries,
                            backoff_s=settings.llm_backoff_s, transcript=transcript)
    if name == "llm":
        return LLMProposer(client, settings.prompt)
    return LLMRankProposer(client, seed=settings.seed)


def run_search(settings: SearchSettings, latency_model: LatencyFactory, on_evaluation=None) -> dict:
    """Run (or resume, or replay) a search; returns the summary also written to RUN_DIR/summary.json.

    ``latency_model(supernet)`` gives the latency source for the target device (see latency.py).
    """
    from pathnas.data import build_loaders
    from pathnas.train import load_supernet
    from pathnas.train.distributed import resolve_device

    run_dir = Path(settings.run_dir)
    evaluations_path = run_dir / "evaluations.jsonl"
    if evaluations_path.exists() and not settings.resume:
        raise AlreadyExistsError(f"{run_dir} already holds a search: pass --resume to continue it, or another --run-dir")
    if settings.replay and not Path(settings.replay).is_file():
        raise MissingFileError(f"transcript {settings.replay} does not exist")
    device = resolve_device(settings.torch_device)
    supernet, ckpt = load_supernet(settings.supernet)
    supernet.to(device).eval()
    if settings.space and settings.space != supernet.config.space:
        raise ConfigError(f"--space {settings.space} but {settings.supernet} is a {supernet.config.space} supernet")
    predictor = latency_model(supernet)
    target = predictor.describe()
    data = build_loaders(settings.data, supernet.config.input_size, settings.batch_size, seed=settings.seed)
    if data.num_classes != supernet.config.num_classes:
        raise ConfigError(f"{settings.data} has {data.num_classes} classes; the supernet was trained for "
                         f"{supernet.config.num_classes}")
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the settings are known to work
    budgets = Budgets(settings.budget_ms, settings.budget_mflops)
    evaluator = Evaluator(supernet, data, predictor, settings, device)
    transcript = Transcript(run_dir / "transcript.jsonl")
    proposer = _make_proposer(settings, transcript)

    def feasible(arch) -> bool:
        if budgets.latency_ms is not None and predictor.predict_ms(arch) > budgets.latency_ms:
            return False
        return budgets.mflops is None or evaluator.cost(arch)[0] / 1e6 <= budgets.mflops

    history = read_jsonl(evaluations_path) if settings.resume else []
    if history:
        log.info("resuming: %d evaluation(s) already recorded in %s", len(history), evaluations_path)
    ctx = SearchContext(supernet.space, feasible, history, metric_name=evaluator.metric_name, seed=settings.seed)
    ctx.prompt_facts = {
        "task": "classification" if supernet.task == "classify" else "segmentation",
        "dataset": describe_dataset(data, Path(settings.data)), "space_notes": space_notes(supernet),
        "device": target["device"], "runtime": target["runtime"], "precision": target["precision"],
        "batch_size": target["batch_size"], "label_latency": predictor.label,
        "latency_source_note": ("ROOFLINE ESTIMATES from published peak compute and bandwidth, not measurements."
                                if predictor.is_estimate else "predicted from a latency table measured on the device."),
        "budgets": budgets.describe(predictor.label), "has_inactive": supernet.config.space == "vit",
    }
    status, reason = "completed", None
    for iteration in range(len(history), settings.iterations):
        try:
            arch = proposer.propose(ctx)
        except (LLMUnavailable, NoProposal) as err:
            status, reason = "stopped", str(err)
            log.error("search stopped at iteration %d: %s (everything so far is saved)", iteration, err)
            break
        record = evaluator(arch, iteration, proposer.name, budgets)
        append_jsonl(evaluations_path, record)
        history.append(record)
        if on_evaluation:
            on_evaluation(record)
        log.info("iteration %d: %s %s=%.2f latency %s MFLOPs %.2f %s", iteration, arch.code, record["metric_name"],
                 record["metric"], predictor.label(record["latency_ms"]), record["flops"] / 1e6,
                 "meets budgets" if record["meets_budgets"] else "misses budgets")
    summary = summarize(history, settings, ckpt, supernet, predictor, budgets, proposer.name, status, reason, transcript)
    write_json_atomic(run_dir / "summary.json", summary)
    if history:
        plot_pareto(history, summary, run_dir / "pareto.png", predictor.is_estimate)
    return summary


def summarize(history, settings, ckpt, supernet, predictor, budgets, proposer_name, status, reason, transcript) -> dict:
    feasible = [r for r in history if r["meets_budgets"]]
    best = max(feasible, key=lambda r: r["metric"]) if feasible else None
    calls = [r for r in read_jsonl(transcript.path) if r.get("type") == "llm_call"] if transcript.path.exists() else []
    costs = [r["cost_usd_estimate"] for r in calls if r.get("cost_usd_estimate") is not None]
    return {
        "status": status, "reason": reason, "proposer": proposer_name, "iterations": settings.iterations,
        "evaluations": len(history), "best": best, "pareto": pareto_front(history),
        "budgets": budgets.as_dict(), "device": predictor.describe(),
        "space_config": supernet.config.model_dump(mode="json"), "supernet": str(settings.supernet),
        "classes": ckpt.get("classes"), "data": str(settings.data),
        "llm": {"calls": len(calls), "failed_calls": sum(1 for r in calls if r.get("error")),
                "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in calls),
                "completion_tokens": sum(r.get("completion_tokens") or 0 for r in calls),
                "cost_usd_estimate": round(sum(costs), 6) if costs else None},
    }


def plot_pareto(history: list[dict], summary: dict, path: Path, is_estimate: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathnas.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ok = [r for r in history if r["meets_budgets"]]
    miss = [r for r in history if not r["meets_budgets"]]
    ax.scatter([r["latency_ms"] for r in ok], [r["metric"] for r in ok], c="tab:blue", label="meets budgets")
    ax.scatter([r["latency_ms"] for r in miss], [r["metric"] for r in miss], c="tab:gray", marker="x", label="misses budgets")
    front = summary["pareto"]
    ax.plot([r["latency_ms"] for r in front], [r["metric"] for r in front], "-o", c="tab:orange", label="Pareto front")
    if summary["best"]:
        ax.scatter([summary["best"]["latency_ms"]], [summary["best"]["metric"]], s=160, facecolors="none",
                   edgecolors="tab:red", label=f"best {summary['best']['arch']}")
    if summary["budgets"]["latency_ms"]:
        ax.axvline(summary["budgets"]["latency_ms"], ls="--", c="tab:red", label="latency budget")
    kind = "roofline ESTIMATE" if is_estimate else "predicted from measured table"
    ax.set_xlabel(f"latency on {summary['device']['device']} (ms, {kind})")
    ax.set_ylabel(history[0]["metric_name"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
