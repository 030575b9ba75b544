"""Proposers: where the next architecture to evaluate comes from.

All share one interface, ``propose(ctx) -> Architecture``, and honour the budgets: a
candidate's predicted latency and FLOPs are free, so infeasible ones are refused before
anything is evaluated. ``llm`` asks an LLM for a new architecture from the history (the
Pathology-NAS loop); ``llm-rank`` has it pick the best of K feasible candidates shown as
compact numeric codes (LM-Searcher); ``prior-bo`` (bo.py, the offline default), ``evolution``
and ``random`` need no network. Offline proposals are functions of (seed, history), so a
resumed search proposes exactly what an uninterrupted one would have.

An LLM proposal that misses a budget (or repeats one) is sent back with its predicted
latency, FLOPs and the budget it missed, stays in the prompt history as rejected, and never
stops the search: after the attempts, the offline fallback proposes for that iteration.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Callable

import numpy as np
import torch

from pathnas.errors import ConfigError
from pathnas.spaces import Architecture, SearchSpace

from . import figures
from .llm import ReplySchema, untrusted
from .parse import ProposalError, ncode, parse_choice, parse_proposal

log = logging.getLogger("pathnas.search")


class NoProposal(RuntimeError):
    """A proposer could not produce a new, valid, feasible architecture."""


def template(name: str) -> Template:
    return Template(resources.files("pathnas.search").joinpath("prompts", name).read_text(encoding="utf-8"))


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one random stream, a function of (seed, keys) only (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed % 2**63, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class SearchContext:
    """What a proposer may look at: the space, the budgets' verdict on a candidate, the history."""

    space: SearchSpace
    feasible: Callable[[Architecture], bool]  # exact: every budget met, and nothing wrong with it
    history: list[dict] = field(default_factory=list)  # evaluation records, in order
    prompt_facts: dict = field(default_factory=dict)  # task, data set, device, budgets: for LLM prompts
    metric_name: str = "top1_pct"
    seed: int = 0
    rejected: list[dict] = field(default_factory=list)  # LLM proposals refused before evaluation
    assess: Callable[[Architecture], dict] | None = None  # free figures and verdict of a candidate
    capacity: Callable[[Architecture], tuple[float, float]] | None = None  # free (FLOPs, params), may be estimates
    maybe_feasible: Callable[[Architecture], bool] | None = None  # cheap: False only when surely infeasible
    members: Callable[[], list[Architecture] | None] | None = None  # every architecture, when few enough to list
    cache: dict = field(default_factory=dict)  # proposers' per-search memo (budgets and space are fixed)

    def evaluated(self) -> set[str]:
        return {r["arch"] for r in self.history}

    def listed(self) -> list[Architecture] | None:
        """Every architecture that may meet the budgets, when the space is small enough to list (cached)."""
        if "listed" not in self.cache:
            members = self.members() if self.members else None
            check = self.maybe_feasible or self.feasible
            self.cache["listed"] = None if members is None else [a for a in members if check(a)]
        return self.cache["listed"]

    def ranked(self) -> list[dict]:
        """Evaluations that met the budgets, best first."""
        return sorted((r for r in self.history if r["meets_budgets"]), key=lambda r: -r["metric"])


def _new_and_feasible(ctx: SearchContext, arch: Architecture, taken: set[str]) -> bool:
    return arch.code not in taken and ctx.feasible(arch)


class RandomProposer:
    name = "random"

    def __init__(self, seed: int = 0, max_tries: int = 2000):
        self.seed, self.max_tries = seed, max_tries

    @staticmethod
    def generator(seed: int, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(stream_seed(seed, *keys))

    def propose(self, ctx: SearchContext) -> Architecture:
        """Uniform over the new architectures that meet the budgets: drawn from the list of them when the
        space can be listed (a tight budget leaves few), else by rejection sampling."""
        taken = ctx.evaluated()
        listed = ctx.listed()
        if listed is not None:
            rng = np.random.default_rng(stream_seed(self.seed, 1, len(ctx.history)))
            for i in rng.permutation(len(listed)):
                if _new_and_feasible(ctx, listed[i], taken):
                    return listed[i]
            raise NoProposal("every architecture that meets the budgets was evaluated")
        gen = self.generator(self.seed, 1, len(ctx.history))
        for _ in range(self.max_tries):
            arch = ctx.space.sample(gen)
            if _new_and_feasible(ctx, arch, taken):
                return arch
        raise NoProposal(f"no new architecture meeting the budgets in {self.max_tries} random samples")


class EvolutionProposer:
    """SPOS / AutoFormer evolution: population 50 (random), then children of the top-10 parents, by
    mutation (P_d 0.2 for the depth, P_m 0.4 for every other decision) or crossover, half of each,
    within the budgets. Steady state: each child comes from the history as it is, so a resumed
    search breeds the same children."""

    name = "evolution"

    def __init__(self, seed: int = 0, population: int = 50, parents: int = 10, p_depth: float = 0.2,
                 p_mutate: float = 0.4, max_tries: int = 2000):
        self.seed = seed
        self.random = RandomProposer(seed)
        self.population, self.parents = population, parents
        self.p_depth, self.p_mutate, self.max_tries = p_depth, p_mutate, max_tries

    def mutate(self, space: SearchSpace, parent: Architecture, rng: random.Random) -> Architecture:
        values = list(parent.values)
        for pos, decision in enumerate(space.decisions):
            p = self.p_depth if decision.name == "depth" else self.p_mutate
            if rng.random() < p:
                values[pos] = rng.choice(decision.values)
        return _repair(space, values, rng)

    def crossover(self, space: SearchSpace, a: Architecture, b: Architecture, rng: random.Random) -> Architecture:
        return _repair(space, [rng.choice(pair) for pair in zip(a.values, b.values)], rng)

    def propose(self, ctx: SearchContext) -> Architecture:
        if len(ctx.history) < self.population:  # the initial population is random
            return self.random.propose(ctx)
        parents = [ctx.space.decode(r["arch"]) for r in ctx.ranked()[: self.parents]]
        rng = random.Random(stream_seed(self.seed, 2, len(ctx.history)))
        taken = ctx.evaluated()
        for _ in range(self.max_tries if parents else 0):
            if rng.random() < 0.5 or len(parents) < 2:
                child = self.mutate(ctx.space, rng.choice(parents), rng)
            else:
                child = self.crossover(ctx.space, *rng.sample(parents, 2), rng)
            if _new_and_feasible(ctx, child, taken):
                return child
        return self.random.propose(ctx)  # nothing new evolved (e.g. no parent met the budgets yet)


def _repair(space: SearchSpace, values: list, rng: random.Random) -> Architecture:
    """Make a recombined value list valid: decisions switched on by the depth get a value, others '-'."""
    active = space.active(values)
    fixed = [
        (v if v is not None else rng.choice(d.values)) if on else None
        for d, v, on in zip(space.decisions, values, active)
    ]
    return space.from_values(fixed)


# -- what the LLM is shown ------------------------------------------------------------------

def latency_cell(record: dict, is_estimate: bool) -> str:
    """Predicted latency, and the latency measured here beside it when the device is this machine."""
    text = figures.ms(record["latency_ms"], is_estimate)
    if record.get("measured_latency_ms") is not None:
        text += f"; measured here {figures.ms(record['measured_latency_ms'])}"
    return text


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


def history_rows(ctx: SearchContext) -> list[dict]:
    """Evaluations and rejected proposals in the order they happened."""
    rows = [dict(r, _order=(r["iteration"], 1, 0)) for r in ctx.history]
    rows += [dict(r, _order=(r["iteration"], 0, r.get("attempt", 0))) for r in ctx.rejected]
    return sorted(rows, key=lambda r: r["_order"])


def drop_order(ctx: SearchContext, rows: list[dict]) -> list[dict]:
    """The rule that shortens a prompt's history to fit a context: rows off the Pareto front (accuracy vs
    latency; rejected proposals are never on it) go first, oldest first; then the front's, oldest first."""
    front = {r["arch"] for r in pareto_front([r for r in ctx.history if r.get("latency_ms") is not None])}
    on_front = [r for r in rows if "metric" in r and r["arch"] in front]
    return [r for r in rows if r not in on_front] + on_front


def omitted_note(omitted: int, rows: list[dict]) -> str:
    if not omitted:
        return ""
    return (f"\n({omitted} older row(s) left out to fit the model's context window: rows off the Pareto front of "
            f"accuracy vs latency go first, oldest first; {len(rows)} shown.)")


def history_table(ctx: SearchContext, rows: list[dict] | None = None, omitted: int = 0) -> str:
    if not ctx.history and not ctx.rejected:
        return "None yet: this is the first proposal."
    is_estimate = bool(ctx.prompt_facts.get("is_estimate"))
    lines = [f"| # | code | configuration | {ctx.metric_name} | MFLOPs | params (M) | latency | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in history_rows(ctx) if rows is None else rows:
        evaluated = "metric" in r
        cells = [
            str(r["iteration"]) if evaluated else f"{r['iteration']} (not evaluated)", r["arch"], r["arch_explicit"],
            f"{r['metric']:.2f}" if evaluated else "-",
            figures.mflops(r["flops"]) if r.get("flops") is not None else "-",
            figures.mparams(r["params"]) if r.get("params") is not None else "-",
            latency_cell(r, is_estimate) if r.get("latency_ms") is not None else "-", r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + omitted_note(omitted, rows or [])


def decisions_list(space: SearchSpace) -> str:
    return "\n".join(f"- position {i}: {d.name}: {', '.join(_show(v) for v in d.values)}"
                     for i, d in enumerate(space.decisions))


def _show(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def proposal_schema(space: SearchSpace, has_inactive: bool) -> ReplySchema:
    """The JSON schema of a proposal (what the prompt's answer format asks), for servers that enforce one."""
    values = list(dict.fromkeys(v for d in space.decisions for v in d.values))
    if has_inactive:
        values += ["-", None]
    return ReplySchema("architecture_proposal", {
        "type": "object", "additionalProperties": False, "required": ["reasoning", "configuration"],
        "properties": {"reasoning": {"type": "string"},
                       "configuration": {"type": "array", "items": {"enum": values}}}})


def choice_schema(space: SearchSpace, pool: list[Architecture]) -> ReplySchema:
    """The JSON schema of a pick among the candidates: an NCode shown, or its number in the list."""
    return ReplySchema("candidate_choice", {
        "type": "object", "additionalProperties": False, "required": ["choice"],
        "properties": {"choice": {"anyOf": [{"type": "string", "enum": [ncode(a, space) for a in pool]},
                                            {"type": "integer", "enum": list(range(1, len(pool) + 1))}]}}})


class _LLMBase:
    """What both LLM proposers share: the client, the transcript notes, the offline fallback."""

    name = "llm"

    def __init__(self, client, max_attempts: int = 3, fallback=None):
        self.client, self.max_attempts, self.fallback = client, max_attempts, fallback
        self.last_source = self.name

    def _note(self, entry: dict) -> None:
        transcript = getattr(self.client, "transcript", None)
        if transcript is not None:
            transcript.record(entry)

    def _say(self, text: str) -> str:
        """Server-derived text as it may be logged, recorded or sent: redacted, one line, bounded."""
        return untrusted(self.client.redact(text), limit=600)

    def _reply_notes(self, notes: list[str], iteration: int, purpose: str) -> None:
        for note in notes:
            log.info("iteration %d: %s", iteration, note)
            self._note({"type": "reply_note", "iteration": iteration, "purpose": purpose, "note": note})

    def _fit(self, ctx: SearchContext, build: Callable[[list[dict], int], list[dict]], purpose: str,
             iteration: int) -> list[dict]:
        """The messages ``build(rows, omitted)`` makes with as much of the history as the server's context holds
        (an estimate, from characters): rows leave by ``drop_order``, and the log and the transcript say so."""
        rows = history_rows(ctx)
        messages = build(rows, 0)
        limit = self.client.prompt_limit() if hasattr(self.client, "prompt_limit") else None
        before = self.client.estimate_tokens(messages) if limit is not None else 0
        if limit is None or before <= limit:
            return messages
        dropped: list[dict] = []
        after = before
        for row in drop_order(ctx, rows):
            dropped.append(row)
            kept = [r for r in rows if not any(r is d for d in dropped)]
            messages = build(kept, len(dropped))
            after = self.client.estimate_tokens(messages)
            if after <= limit:
                break
        else:
            raise NoProposal(f"the prompt does not fit the model's context of {self.client.server.context_tokens:,} "
                             f"tokens even without its history (about {after:,} tokens, estimated): give a larger "
                             f"--llm-context or serve the model with a larger context")
        front = {r["arch"] for r in pareto_front([r for r in ctx.history if r.get("latency_ms") is not None])}
        message = (f"the prompt (about {before:,} tokens, estimated) would not fit the model's context ({limit:,} "
                   f"tokens for the prompt): left out {len(dropped)} of {len(rows)} history row(s), oldest off the "
                   f"Pareto front first; now about {after:,} tokens")
        log.warning("iteration %d: %s", iteration, message)
        self._note({"type": "prompt_shortened", "iteration": iteration, "purpose": purpose, "note": message,
                    "estimated_tokens_before": before, "estimated_tokens_after": after, "prompt_token_limit": limit,
                    "dropped": [r["arch"] for r in dropped],
                    "dropped_from_pareto_front": [r["arch"] for r in dropped if "metric" in r and r["arch"] in front]})
        return messages

    def _usable(self, reply) -> None:
        """A reply the server sent without following the schema asked for is unusable (the transcript says so)."""
        problem = getattr(reply, "schema_problem", None)
        if problem:
            raise ProposalError(f"the server answered, but the reply does not follow the requested JSON schema "
                                f"({problem}); reply with the JSON object alone")

    def _fall_back(self, ctx: SearchContext, iteration: int, reason: str) -> Architecture:
        arch = self.fallback.propose(ctx)
        self.last_source = f"{self.fallback.name} (fallback)"
        message = (f"the LLM gave no usable new architecture in {self.max_attempts} attempts (last: {reason}); "
                   f"{self.fallback.name} proposes for this iteration")
        log.warning("iteration %d: %s", iteration, message)
        self._note({"type": "fallback", "iteration": iteration, "proposer": self.fallback.name, "reason": message,
                    "arch": arch.code})
        return arch


class LLMProposer(_LLMBase):
    """The Pathology-NAS loop: the LLM proposes one architecture from the history."""

    name = "llm"

    def __init__(self, client, prompt: str = "expert", max_attempts: int = 3, fallback=None):
        if prompt not in ("expert", "generic", "none"):
            raise ConfigError(f"prompt {prompt!r}: allowed values are expert, generic, none")
        super().__init__(client, max_attempts, fallback)
        self.prompt = prompt

    def system_messages(self) -> list[dict]:
        if self.prompt == "none":
            return []
        return [{"role": "system", "content": template(f"system_{self.prompt}.md").template.strip()}]

    def user_prompt(self, ctx: SearchContext, rows: list[dict] | None = None, omitted: int = 0) -> str:
        f = ctx.prompt_facts
        return template("propose.md").substitute(
            task=f["task"], metric_name=ctx.metric_name, dataset=f["dataset"], space=ctx.space.name,
            space_notes=f["space_notes"], decisions=decisions_list(ctx.space), device=f["device"],
            latency_source_note=f["latency_source_note"], budgets=f["budgets"],
            history=history_table(ctx, rows, omitted),
            last_position=len(ctx.space) - 1, num_decisions=len(ctx.space),
            inactive_note=', "-" for a decision that does not apply' if f.get("has_inactive") else "",
        )

    def _refusal(self, ctx: SearchContext, arch: Architecture, iteration: int, attempt: int) -> str | None:
        """Why a well-formed proposal cannot be evaluated (None when it can); a budget miss is recorded."""
        done = next((r for r in ctx.history if r["arch"] == arch.code), None)
        if done is not None:
            return (f"architecture {arch.code} was already evaluated (iteration {done['iteration']}, "
                    f"{ctx.metric_name} {done['metric']:.2f}); propose one that has not been evaluated")
        if ctx.feasible(arch):
            return None
        seen = ctx.assess(arch) if ctx.assess else {"verdict": "misses the budgets"}
        entry = {"type": "rejected", "iteration": iteration, "attempt": attempt, "arch": arch.code,
                 "arch_explicit": arch.explicit(), **{k: seen.get(k) for k in
                                                      ("latency_ms", "flops", "params", "budgets_met", "problem")},
                 "verdict": seen["verdict"]}
        ctx.rejected.append(entry)
        self._note(entry)
        facts = []
        if seen.get("latency_ms") is not None:
            shown = figures.ms(seen["latency_ms"], bool(ctx.prompt_facts.get("is_estimate")))
            facts.append(f"predicted latency on the device {shown}")
        if seen.get("flops") is not None:
            facts.append(f"{figures.mflops(seen['flops'])} MFLOPs")
        return (f"architecture {arch.code} ({arch.explicit()}) was not evaluated: {seen['verdict']}"
                f"{' (' + ', '.join(facts) + ')' if facts else ''}. It stays in the history as rejected. "
                f"Propose an architecture that meets every budget ({ctx.prompt_facts.get('budgets', 'see above')})")

    def propose(self, ctx: SearchContext) -> Architecture:
        self.last_source = self.name
        iteration = len(ctx.history)
        messages = self._fit(ctx, lambda rows, omitted: self.system_messages() + [
            {"role": "user", "content": self.user_prompt(ctx, rows, omitted)}], "propose", iteration)
        schema = proposal_schema(ctx.space, bool(ctx.prompt_facts.get("has_inactive")))
        well_formed, last = False, "no reply"
        for attempt in range(self.max_attempts):
            reply = self.client.chat(messages, purpose="propose", iteration=iteration, schema=schema)
            notes: list[str] = []
            try:
                self._usable(reply)
                arch = parse_proposal(reply.text, ctx.space, notes)
                self._reply_notes(notes, iteration, "propose")
                well_formed = True
                reason = self._refusal(ctx, arch, iteration, attempt)
                if reason is None:
                    return arch
            except ProposalError as err:
                reason = str(err)
            last = self._say(reason)
            log.info("iteration %d: LLM proposal %d not used: %s", iteration, attempt + 1, last)
            messages = messages + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": template("retry.md").substitute(error=self.client.redact(reason))},
            ]
        if well_formed and self.fallback is not None:  # the LLM works but missed the budgets: go on without it
            return self._fall_back(ctx, iteration, last)
        raise NoProposal(f"the LLM gave no valid new architecture in {self.max_attempts} attempts (last: {last})")


class LLMRankProposer(_LLMBase):
    """LM-Searcher: the LLM ranks K feasible candidates (half random, half mutations of the best),
    shown with the history as NCodes, and picks one."""

    name = "llm-rank"

    def __init__(self, client, candidates: int = 10, seed: int = 0, max_attempts: int = 3, fallback=None):
        super().__init__(client, max_attempts, fallback)
        self.k, self.seed = candidates, seed
        self.random = RandomProposer(seed)
        self.evolution = EvolutionProposer(seed, population=0)

    def candidates(self, ctx: SearchContext) -> list[Architecture]:
        pool: dict[str, Architecture] = {}
        rng = random.Random(stream_seed(self.seed, 3, len(ctx.history)))
        best = [ctx.space.decode(r["arch"]) for r in ctx.ranked()[:5]]
        taken = ctx.evaluated()
        # random draws must not repeat the pool: they see it as evaluated
        probe = SearchContext(ctx.space, ctx.feasible, list(ctx.history), members=ctx.members,
                              maybe_feasible=ctx.maybe_feasible, cache=ctx.cache)
        for _ in range(self.k * 50):
            if len(pool) >= self.k:
                break
            if best and len(pool) < self.k // 2:
                arch = self.evolution.mutate(ctx.space, rng.choice(best), rng)
                if not _new_and_feasible(ctx, arch, taken | set(pool)):
                    continue
            else:
                try:
                    arch = self.random.propose(probe)
                except NoProposal:
                    break
                probe.history.append({"arch": arch.code, "iteration": -1, "meets_budgets": False, "metric": 0.0})
            pool[arch.code] = arch
        if not pool:
            raise NoProposal("no new candidate meets the budgets")
        return list(pool.values())

    def prompt(self, ctx: SearchContext, pool: list[Architecture], rows: list[dict] | None = None,
               omitted: int = 0) -> str:
        f, space = ctx.prompt_facts, ctx.space
        is_estimate = bool(f.get("is_estimate"))
        rows = history_rows(ctx) if rows is None else rows
        history = "\n".join(
            f"NCode: {ncode(space.decode(r['arch']), space)}, " +
            (f"{ctx.metric_name}: {r['metric']:.2f}, " if "metric" in r else "not evaluated, ") +
            (f"latency: {latency_cell(r, is_estimate)}, " if r.get("latency_ms") is not None else "") +
            (f"MFLOPs: {figures.mflops(r['flops'])}, " if r.get("flops") is not None else "") +
            f"verdict: {r['verdict']}"
            for r in rows) + omitted_note(omitted, rows) or "None yet."
        assess = ctx.assess or (lambda a: {})
        lines = []
        for i, arch in enumerate(pool):
            a = assess(arch)
            extra = []
            if a.get("latency_ms") is not None:
                extra.append(f"latency: {figures.ms(a['latency_ms'], is_estimate)}")
            if a.get("flops") is not None:
                extra.append(f"MFLOPs: {figures.mflops(a['flops'])}")
            lines.append(f"{i + 1}. NCode: {ncode(arch, space)}" + (f" ({', '.join(extra)})" if extra else ""))
        return template("rank.md").substitute(
            task=f["task"], space=space.name, device=f["device"], metric_name=ctx.metric_name,
            latency_source_note=f["latency_source_note"], budgets=f["budgets"],
            ncode_inactive=" ('-' where a decision does not apply)" if f.get("has_inactive") else "",
            decisions="\n".join(f"- {i}: {d.name}: " + ", ".join(f"{j}={_show(v)}" for j, v in enumerate(d.values))
                                for i, d in enumerate(space.decisions)),
            history=history, candidates="\n".join(lines),
        )

    def propose(self, ctx: SearchContext) -> Architecture:
        self.last_source = self.name
        pool = self.candidates(ctx)
        iteration = len(ctx.history)
        messages = self._fit(ctx, lambda rows, omitted: [{"role": "user", "content": self.prompt(ctx, pool, rows,
                                                                                                   omitted)}],
                             "rank", iteration)
        schema = choice_schema(ctx.space, pool)
        last = "no reply"
        for attempt in range(self.max_attempts):
            reply = self.client.chat(messages, purpose="rank", iteration=iteration, schema=schema)
            notes: list[str] = []
            try:
                self._usable(reply)
                arch = parse_choice(reply.text, ctx.space, pool, notes)
                self._reply_notes(notes, iteration, "rank")
                return arch
            except ProposalError as err:
                last = self._say(str(err))
                log.info("iteration %d: LLM ranking %d not used: %s", iteration, attempt + 1, last)
                messages = messages + [
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": template("retry.md").substitute(error=self.client.redact(str(err)))}]
        raise NoProposal(f"the LLM picked no valid candidate in {self.max_attempts} attempts (last: {last})")
