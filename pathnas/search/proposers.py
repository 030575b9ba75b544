"""Proposers: where the next architecture to evaluate comes from.

All share one interface, ``propose(ctx) -> Architecture``, and honour the budgets: a
candidate's predicted latency and FLOPs are cheap, so infeasible ones are rejected before
anything is evaluated. ``llm`` asks an LLM for a new architecture from the history (the
Pathology-NAS loop); ``llm-rank`` has it pick the best of K feasible candidates shown as
compact numeric codes (LM-Searcher); ``evolution`` and ``random`` need no network.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Callable

import torch

from pathnas.errors import ConfigError
from pathnas.spaces import Architecture, SearchSpace

from .parse import ProposalError, ncode, parse_choice, parse_proposal

log = logging.getLogger("pathnas.search")


class NoProposal(RuntimeError):
    """A proposer could not produce a new, valid, feasible architecture."""


def template(name: str) -> Template:
    return Template(resources.files("pathnas.search").joinpath("prompts", name).read_text(encoding="utf-8"))


@dataclass
class SearchContext:
    """What a proposer may look at: the space, the budgets' verdict on a candidate, the history."""

    space: SearchSpace
    feasible: Callable[[Architecture], bool]
    history: list[dict] = field(default_factory=list)  # evaluation records, in order
    prompt_facts: dict = field(default_factory=dict)  # task, data set, device, budgets: for LLM prompts
    metric_name: str = "top1_pct"
    seed: int = 0

    def evaluated(self) -> set[str]:
        return {r["arch"] for r in self.history}

    def ranked(self) -> list[dict]:
        """Evaluations that met the budgets, best first."""
        return sorted((r for r in self.history if r["meets_budgets"]), key=lambda r: -r["metric"])


def _new_and_feasible(ctx: SearchContext, arch: Architecture, taken: set[str]) -> bool:
    return arch.code not in taken and ctx.feasible(arch)


class RandomProposer:
    name = "random"

    def __init__(self, seed: int = 0, max_tries: int = 2000):
        self.gen = torch.Generator().manual_seed(seed)
        self.max_tries = max_tries

    def propose(self, ctx: SearchContext) -> Architecture:
        taken = ctx.evaluated()
        for _ in range(self.max_tries):
            arch = ctx.space.sample(self.gen)
            if _new_and_feasible(ctx, arch, taken):
                return arch
        raise NoProposal(f"no new architecture meeting the budgets in {self.max_tries} random samples")


class EvolutionProposer:
    """SPOS / AutoFormer evolution: population 50, top-10 parents, mutation (P_d 0.2 for the
    depth, P_m 0.4 for every other decision) and crossover, half of each, within the budgets."""

    name = "evolution"

    def __init__(self, seed: int = 0, population: int = 50, parents: int = 10, p_depth: float = 0.2,
                 p_mutate: float = 0.4, max_tries: int = 2000):
        self.rng = random.Random(seed)
        self.random = RandomProposer(seed)
        self.population, self.parents = population, parents
        self.p_depth, self.p_mutate, self.max_tries = p_depth, p_mutate, max_tries
        self.queue: list[Architecture] = []

    def _mutate(self, space: SearchSpace, parent: Architecture) -> Architecture:
        values = list(parent.values)
        for pos, decision in enumerate(space.decisions):
            p = self.p_depth if decision.name == "depth" else self.p_mutate
            if self.rng.random() < p:
                values[pos] = self.rng.choice(decision.values)
        return _repair(space, values, self.rng)

    def _crossover(self, space: SearchSpace, a: Architecture, b: Architecture) -> Architecture:
        return _repair(space, [self.rng.choice(pair) for pair in zip(a.values, b.values)], self.rng)

    def _next_generation(self, ctx: SearchContext) -> list[Architecture]:
        parents = [ctx.space.decode(r["arch"]) for r in ctx.ranked()[: self.parents]]
        if not parents:
            return []
        taken = ctx.evaluated()
        children: list[Architecture] = []
        for _ in range(self.max_tries):
            if len(children) >= self.population:
                break
            if len(children) < self.population // 2 or len(parents) < 2:
                child = self._mutate(ctx.space, self.rng.choice(parents))
            else:
                child = self._crossover(ctx.space, *self.rng.sample(parents, 2))
            if _new_and_feasible(ctx, child, taken):
                taken.add(child.code)
                children.append(child)
        return children

    def propose(self, ctx: SearchContext) -> Architecture:
        if len(ctx.history) < self.population:  # the initial population is random
            return self.random.propose(ctx)
        taken = ctx.evaluated()
        self.queue = [a for a in self.queue if a.code not in taken]
        if not self.queue:
            self.queue = self._next_generation(ctx)
        if not self.queue:  # nothing feasible evolved (e.g. no parent met the budgets yet)
            return self.random.propose(ctx)
        return self.queue.pop(0)


def _repair(space: SearchSpace, values: list, rng: random.Random) -> Architecture:
    """Make a recombined value list valid: decisions switched on by the depth get a value, others '-'."""
    active = space.active(values)
    fixed = [
        (v if v is not None else rng.choice(d.values)) if on else None
        for d, v, on in zip(space.decisions, values, active)
    ]
    return space.from_values(fixed)


def history_table(ctx: SearchContext, label_latency: Callable[[float], str]) -> str:
    if not ctx.history:
        return "None yet: this is the first proposal."
    rows = ["| # | code | configuration | " + ctx.metric_name + " | MFLOPs | params (M) | latency | budgets |",
            "|---|---|---|---|---|---|---|---|"]
    for r in ctx.history:
        rows.append(
            f"| {r['iteration']} | {r['arch']} | {r['arch_explicit']} | {r['metric']:.2f} | {r['flops'] / 1e6:.2f} | "
            f"{r['params'] / 1e6:.3f} | {label_latency(r['latency_ms'])} | {'met' if r['meets_budgets'] else 'MISSED'} |"
        )
    return "\n".join(rows)


class LLMProposer:
    """The Pathology-NAS loop: the LLM proposes one architecture from the history."""

    name = "llm"

    def __init__(self, client, prompt: str = "expert", max_attempts: int = 3):
        if prompt not in ("expert", "generic", "none"):
            raise ConfigError(f"prompt {prompt!r}: allowed values are expert, generic, none")
        self.client, self.prompt, self.max_attempts = client, prompt, max_attempts

    def system_messages(self) -> list[dict]:
        if self.prompt == "none":
            return []
        return [{"role": "system", "content": template(f"system_{self.prompt}.md").template.strip()}]

    def user_prompt(self, ctx: SearchContext) -> str:
        f = ctx.prompt_facts
        decisions = "\n".join(
            f"- position {i}: {d.name}: {', '.join(_show(v) for v in d.values)}" for i, d in enumerate(ctx.space.decisions)
        )
        return template("propose.md").substitute(
            task=f["task"], metric_name=ctx.metric_name, dataset=f["dataset"], space=ctx.space.name,
            space_notes=f["space_notes"], decisions=decisions, device_name=f["device"], runtime=f["runtime"],
            precision=f["precision"], batch_size=f["batch_size"], latency_source_note=f["latency_source_note"],
            budgets=f["budgets"], history=history_table(ctx, f["label_latency"]),
            last_position=len(ctx.space) - 1, num_decisions=len(ctx.space),
            inactive_note=', "-" for a decision that does not apply' if f.get("has_inactive") else "",
        )

    def propose(self, ctx: SearchContext) -> Architecture:
        messages = self.system_messages() + [{"role": "user", "content": self.user_prompt(ctx)}]
        iteration = len(ctx.history)
        taken = ctx.evaluated()
        for attempt in range(self.max_attempts):
            reply = self.client.chat(messages, purpose="propose", iteration=iteration)
            try:
                arch = parse_proposal(reply.text, ctx.space)
                if arch.code in taken:
                    raise ProposalError(f"architecture {arch.code} was already evaluated; propose a new one")
                if not ctx.feasible(arch):
                    raise ProposalError(f"architecture {arch.code} misses the budgets ({ctx.prompt_facts['budgets']})")
                return arch
            except ProposalError as err:
                last_error = str(err)
                log.info("LLM proposal %d rejected: %s", attempt + 1, err)
                messages = messages + [
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": template("retry.md").substitute(error=str(err))},
                ]
        raise NoProposal(f"the LLM gave no valid new architecture in {self.max_attempts} attempts (last: {last_error})")


def _show(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


class LLMRankProposer:
    """LM-Searcher: the LLM ranks K feasible candidates (half random, half mutations of the best),
    shown with the history as NCodes, and picks one."""

    name = "llm-rank"

    def __init__(self, client, candidates: int = 10, seed: int = 0, max_attempts: int = 3):
        self.client, self.k, self.max_attempts = client, candidates, max_attempts
        self.random = RandomProposer(seed)
        self.evolution = EvolutionProposer(seed, population=0)

    def candidates(self, ctx: SearchContext) -> list[Architecture]:
        pool: dict[str, Architecture] = {}
        best = [ctx.space.decode(r["arch"]) for r in ctx.ranked()[:5]]
        taken = ctx.evaluated()
        for _ in range(self.k * 50):
            if len(pool) >= self.k:
                break
            if best and len(pool) < self.k // 2:
                arch = self.evolution._mutate(ctx.space, self.evolution.rng.choice(best))
                if not _new_and_feasible(ctx, arch, taken | set(pool)):
                    continue
            else:
                try:
                    arch = self.random.propose(ctx)
                except NoProposal:
                    break
                if arch.code in pool:
                    continue
            pool[arch.code] = arch
        if not pool:
            raise NoProposal("no new candidate meets the budgets")
        return list(pool.values())

    def propose(self, ctx: SearchContext) -> Architecture:
        f, space = ctx.prompt_facts, ctx.space
        pool = self.candidates(ctx)
        history = "\n".join(
            f"NCode: {ncode(space.decode(r['arch']), space)}, {ctx.metric_name}: {r['metric']:.2f}, "
            f"latency: {f['label_latency'](r['latency_ms'])}, MFLOPs: {r['flops'] / 1e6:.2f}"
            for r in ctx.history
        ) or "None yet."
        prompt = template("rank.md").substitute(
            task=f["task"], space=space.name, device_name=f["device"], runtime=f["runtime"], precision=f["precision"],
            ncode_inactive=" ('-' where a decision does not apply)" if f.get("has_inactive") else "",
            decisions="\n".join(f"- {i}: {d.name}: " + ", ".join(f"{j}={_show(v)}" for j, v in enumerate(d.values))
                                for i, d in enumerate(space.decisions)),
            budgets=f["budgets"], metric_name=ctx.metric_name, history=history,
            candidates="\n".join(f"{i + 1}. NCode: {ncode(a, space)}" for i, a in enumerate(pool)),
        )
        messages = [{"role": "user", "content": prompt}]
        for attempt in range(self.max_attempts):
            reply = self.client.chat(messages, purpose="rank", iteration=len(ctx.history))
            try:
                return parse_choice(reply.text, space, pool)
            except ProposalError as err:
                last_error = str(err)
                log.info("LLM ranking %d rejected: %s", attempt + 1, err)
                messages = messages + [{"role": "assistant", "content": reply.text},
                                       {"role": "user", "content": template("retry.md").substitute(error=str(err))}]
        raise NoProposal(f"the LLM picked no valid candidate in {self.max_attempts} attempts (last: {last_error})")
