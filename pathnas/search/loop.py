"""The hardware-aware search loop (Pathology-NAS Algorithm 1, with latency fed back).

Each iteration: a proposal, validated and checked against the budgets before anything is
evaluated (latency, FLOPs and params are free); evaluated (a supernet path with inherited
weights after BN recalibration, optionally fine-tuned; or a look-up in a tabular benchmark);
its FLOPs, params, latency on the target device (and the latency measured here when the
device is this machine) and budget verdicts recorded; all of it fed back to the proposer. The
best architecture is the most accurate one that meets every budget (ties: the earliest, or a
benchmark's lowest index); the Pareto front of accuracy against latency is kept too.
Everything lands in the run directory as it happens, so a crashed search resumes without
re-evaluating anything, and a second search on the same directory is refused (RunLock).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pathnas.errors import MissingFileError, UserError
from pathnas.io import append_jsonl, read_jsonl, write_json_atomic
from pathnas.lock import RunLock
from pathnas.settings import SearchSettings

from . import figures
from .factory import choose_proposer, make_proposer
from .latency import LatencyFactory, LatencyModel, source_note
from .llm import LLMUnavailable, Transcript, safe_url
from .plot import plot_pareto
from .proposers import NoProposal, SearchContext, pareto_front
from .runfile import (EVALUATIONS_FILE, FORMAT, HEADER, PARETO_FILE, SUMMARY_FILE, TRANSCRIPT_FILE, open_evaluations,
                      refuse_existing, repair_torn_tail)

log = logging.getLogger("pathnas.search")



class SearchStopped(UserError):
    """A search that could not go on; everything done so far is saved and --resume continues it."""

    exit_code = 3


class Budgets:
    def __init__(self, latency_ms: float | None, mflops: float | None):
        self.latency_ms, self.mflops = latency_ms, mflops

    def check(self, latency_ms: float, flops: int) -> dict[str, bool]:
        out = {}
        if self.latency_ms is not None:
            out["latency"] = latency_ms <= self.latency_ms
        if self.mflops is not None:
            out["flops"] = flops / 1e6 <= self.mflops
        return out

    def misses(self, latency_ms: float, flops: int, is_estimate: bool) -> list[str]:
        """Each budget missed, with the figure and the budget."""
        met = self.check(latency_ms, flops)
        out = []
        if not met.get("latency", True):
            out.append(f"latency {figures.ms(latency_ms, is_estimate)} > budget {figures.ms(self.latency_ms)}")
        if not met.get("flops", True):
            out.append(f"{figures.mflops(flops)} MFLOPs > budget {figures.sig(self.mflops)} MFLOPs")
        return out

    def describe(self, is_estimate: bool) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency on the device at most {figures.ms(self.latency_ms, is_estimate)}")
        if self.mflops is not None:
            parts.append(f"at most {figures.sig(self.mflops)} MFLOPs (one multiply-add = one flop)")
        return "; ".join(parts) or "none (maximize accuracy)"

    def as_dict(self) -> dict:
        return {"latency_ms": self.latency_ms, "mflops": self.mflops}


def best_of(history: list[dict]) -> dict | None:
    """The most accurate evaluation that meets every budget; ties: the lowest benchmark index, else the earliest."""
    feasible = [r for r in history if r["meets_budgets"]]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (r["metric"], -r.get("index", r["iteration"])))


def _device_line(described: dict) -> str:
    details = [f"{label} {described[key]}" for key, label in (("runtime", "runtime"), ("precision", "precision"),
                                                             ("batch_size", "batch size")) if described.get(key)]
    return described["device"] + (f": {', '.join(details)}" if details else "")


class Search:
    """One search's bookkeeping without files: free figures and verdicts of candidates, evaluations,
    the proposers' context. ``run_search`` adds the run directory; benchmarks use it as it is."""

    def __init__(self, target, predictor: LatencyModel, budgets: Budgets, seed: int = 0,
                 measure_local: bool = False):
        self.target, self.predictor, self.budgets = target, predictor, budgets
        self.measure_local = measure_local
        self.ctx = SearchContext(target.space, self.feasible, metric_name=target.metric_name, seed=seed,
                                 assess=self.assess, capacity=target.capacity, maybe_feasible=self.maybe_feasible,
                                 members=target.members)
        described = predictor.describe()
        self.ctx.prompt_facts = {**target.prompt_facts(), "device": _device_line(described),
                                 "latency_source_note": source_note(predictor), "is_estimate": predictor.is_estimate,
                                 "budgets": budgets.describe(predictor.is_estimate)}

    # -- free checks ----------------------------------------------------------------------
    def verdict(self, problem: str | None, latency_ms: float | None, flops: int | None) -> str:
        if problem:
            return f"REJECTED: {problem}"
        misses = self.budgets.misses(latency_ms, flops, self.predictor.is_estimate)
        return "MISSED " + "; ".join(misses) if misses else "met"

    def assess(self, arch) -> dict:
        """Predicted latency, FLOPs, params and the verdict on the budgets: everything but accuracy."""
        problem = self.target.problem(arch)
        if not self.target.known(arch):  # a tabular benchmark without this architecture: no figures at all
            return {"problem": problem, "budgets_met": {}, "meets_budgets": False, "latency_ms": None,
                    "flops": None, "params": None, "verdict": self.verdict(problem, None, None)}
        flops, params = self.target.cost(arch)
        latency = self.predictor.predict_ms(arch)
        met = self.budgets.check(latency, flops)
        return {"problem": problem, "latency_ms": latency, "flops": flops, "params": params, "budgets_met": met,
                "meets_budgets": problem is None and all(met.values()),
                "verdict": self.verdict(problem, latency, flops)}

    def maybe_feasible(self, arch) -> bool:
        """False only when the architecture surely misses (cheap: no FLOPs count of the whole path)."""
        if self.target.problem(arch):
            return False
        if self.budgets.latency_ms is not None and self.predictor.predict_ms(arch) > self.budgets.latency_ms:
            return False
        # capacity FLOPs never exceed the exact count, so over the budget here is over the budget there
        return self.budgets.mflops is None or self.target.capacity(arch)[0] / 1e6 <= self.budgets.mflops

    def feasible(self, arch) -> bool:
        if not self.maybe_feasible(arch):
            return False
        return self.budgets.mflops is None or self.target.cost(arch)[0] / 1e6 <= self.budgets.mflops

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, arch, proposer: str) -> dict:
        start = time.perf_counter()
        result = self.target.evaluate(arch)
        record = {"iteration": len(self.ctx.history), "arch": arch.code, "arch_explicit": arch.explicit(),
                  "proposer": proposer, "metric_name": self.target.metric_name, **result}
        seen = self.assess(arch)
        record.update({k: seen[k] for k in ("flops", "params", "latency_ms")},
                      latency_source=self.predictor.source, latency_is_estimate=self.predictor.is_estimate)
        if self.measure_local:
            measured = self.predictor.measure_ms(arch)
            if measured is not None:
                record["measured_latency_ms"] = measured
        record.update(budgets_met=seen["budgets_met"], meets_budgets=seen["meets_budgets"], verdict=seen["verdict"],
                      seconds=round(time.perf_counter() - start, 3))
        self.ctx.history.append(record)
        return record

    def still_rejected(self, entries: list[dict]) -> list[dict]:
        """Recorded rejections with this search's figures; those that meet the budgets now are dropped."""
        out = []
        for entry in entries:
            try:
                arch = self.target.space.decode(str(entry.get("arch")))
            except UserError:
                continue
            seen = self.assess(arch)
            if not seen["meets_budgets"]:
                out.append({**entry, **{k: seen[k] for k in ("latency_ms", "flops", "params", "budgets_met",
                                                              "problem", "verdict")}})
        return out

    def rescore(self, record: dict, same_device: bool = True) -> dict:
        """A recorded evaluation with this search's latency figures and verdicts (its FLOPs are exact)."""
        arch = self.target.space.decode(record["arch"])
        out = dict(record)
        problem = self.target.problem(arch)
        latency = self.predictor.predict_ms(arch)
        met = self.budgets.check(latency, record["flops"])
        out.update(latency_ms=latency, latency_source=self.predictor.source,
                   latency_is_estimate=self.predictor.is_estimate, budgets_met=met,
                   meets_budgets=problem is None and all(met.values()),
                   verdict=self.verdict(problem, latency, record["flops"]))
        if not same_device:
            out.pop("measured_latency_ms", None)  # timed on this machine for another device
        return out


def open_target(settings: SearchSettings):
    """What the settings search: a tabular benchmark, or a pretrained supernet and its data."""
    if settings.tabular:
        from .tabular import TabularTarget

        return TabularTarget(settings.benchmark, settings.space, settings.dataset, settings.device)
    from .targets import SupernetTarget

    return SupernetTarget(settings)


def _header(settings: SearchSettings, target, predictor: LatencyModel, budgets: Budgets) -> dict:
    shown = settings.model_dump(mode="json", exclude={"resume"})
    if shown.get("llm_base_url"):
        shown["llm_base_url"] = safe_url(shown["llm_base_url"])[0]
    return {"type": HEADER, "format": FORMAT, "identity": target.identity(), "device": predictor.describe()["device"],
            "latency_source": predictor.source, "budgets": budgets.as_dict(), "settings": shown}


def run_search(settings: SearchSettings, latency_model: LatencyFactory, on_evaluation=None) -> dict:
    """Run (or resume, or replay) a search; returns the summary also written to RUN_DIR/summary.json.

    ``latency_model(target.latency_subject)`` gives the latency source for the target device (see
    latency.py): the supernet's device table or estimate, or a tabular benchmark's device column.
    """
    run_dir = Path(settings.run_dir)
    refuse_existing(run_dir / EVALUATIONS_FILE, settings.resume)  # before anything is loaded
    if settings.replay and not Path(settings.replay).is_file():
        raise MissingFileError(f"transcript {settings.replay} does not exist")
    target = open_target(settings)
    predictor = latency_model(target.latency_subject)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the settings are known to work
    with RunLock(run_dir, "search"):
        return _run(settings, target, predictor, run_dir, on_evaluation)


def _run(settings: SearchSettings, target, predictor: LatencyModel, run_dir: Path, on_evaluation) -> dict:
    budgets = Budgets(settings.budget_ms, settings.budget_mflops)
    search = Search(target, predictor, budgets, settings.seed, settings.measure_local)
    ctx = search.ctx
    ctx.history = open_evaluations(run_dir / EVALUATIONS_FILE, _header(settings, target, predictor, budgets),
                                   settings.resume, search.rescore)
    transcript = Transcript(run_dir / TRANSCRIPT_FILE)
    if settings.resume:
        repair_torn_tail(transcript.path)
        ctx.rejected = search.still_rejected(transcript.entries("rejected"))
    elif transcript.path.exists() and not (settings.replay and Path(settings.replay).resolve() ==
                                           transcript.path.resolve()):
        # an earlier attempt that evaluated nothing: keep its calls aside, mix nothing of it in
        os.replace(transcript.path, transcript.path.with_suffix(".jsonl.previous"))
    if ctx.history:
        log.info("resuming: %d evaluation(s) already recorded in %s", len(ctx.history), run_dir / EVALUATIONS_FILE)
    name, why = choose_proposer(settings)
    log.info("proposer %s (%s)", name, why)
    proposer = make_proposer(name, settings, transcript)
    status, reason = "completed", None
    for iteration in range(len(ctx.history), settings.iterations):
        try:
            arch = proposer.propose(ctx)
        except (LLMUnavailable, NoProposal) as err:
            status, reason = "stopped", f"at iteration {iteration}: {err}"
            log.error("search stopped at iteration %d: %s (everything so far is saved)", iteration, err)
            break
        record = search.evaluate(arch, getattr(proposer, "last_source", proposer.name))
        append_jsonl(run_dir / EVALUATIONS_FILE, record)
        if on_evaluation:
            on_evaluation(record)
        measured = (f" (measured here {figures.ms(record['measured_latency_ms'])})"
                    if record.get("measured_latency_ms") is not None else "")
        log.info("iteration %d: %s %s=%.2f latency %s%s MFLOPs %s %s", iteration, arch.code, record["metric_name"],
                 record["metric"], figures.ms(record["latency_ms"], predictor.is_estimate), measured,
                 figures.mflops(record["flops"]), record["verdict"])
    summary = summarize(ctx.history, settings, target, predictor, budgets, (name, why), status, reason, transcript)
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    if ctx.history:
        plot_pareto(ctx.history, summary, run_dir / PARETO_FILE)
    return summary


def summarize(history, settings, target, predictor, budgets, choice, status, reason, transcript) -> dict:
    best = best_of(history)
    if best is not None:
        best = {**best, **target.best_extras(best)}
    calls = [r for r in read_jsonl(transcript.path) if r.get("type") == "llm_call"] if transcript.path.exists() else []
    costs = [r["cost_usd_estimate"] for r in calls if r.get("cost_usd_estimate") is not None]
    return {
        "status": status, "reason": reason, "proposer": choice[0],
        "proposer_choice": {"asked": settings.proposer, "chosen": choice[0], "why": choice[1]},
        "iterations": settings.iterations, "evaluations": len(history), "best": best, "pareto": pareto_front(history),
        "budgets": budgets.as_dict(), "device": predictor.describe(), "search_space": target.describe(),
        **target.summary_fields(),
        "llm": {"calls": len(calls), "failed_calls": sum(1 for r in calls if r.get("error")),
                "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in calls),
                "completion_tokens": sum(r.get("completion_tokens") or 0 for r in calls),
                "cost_usd_estimate": round(sum(costs), 6) if costs else None,
                "schema_ignored": sum(1 for r in calls if r.get("schema_followed") is False),
                "prompts_shortened": len(transcript.entries("prompt_shortened")),
                "rejected_proposals": len(transcript.entries("rejected")),
                "fallback_iterations": len(transcript.entries("fallback"))},
    }
