"""prior-bo's model on a small made-up space: expected improvement, what the Gaussian process learns from
the evaluations, and proposals as functions of (seed, history)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pathnas.search import PriorGuidedProposer, SearchContext
from pathnas.search.bo import enumerate_space, expected_improvement
from pathnas.spaces import Decision, Option, SearchSpace

SPACE = SearchSpace("toy", [Decision(f"d{i}", tuple(Option(v, v) for v in "abcd")) for i in range(4)])
ARCHS = enumerate_space(SPACE)


def convs(arch) -> int:
    return sum(v == "d" for v in arch.values)


def context(history: list[tuple[str, float]], capacity=None) -> SearchContext:
    records = [{"arch": code, "metric": metric, "meets_budgets": True} for code, metric in history]
    return SearchContext(SPACE, feasible=lambda arch: True, history=records, members=lambda: ARCHS,
                         capacity=capacity)


def test_expected_improvement_is_the_closed_form():
    mean, sd = np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 1.0, 1.0, 0.5])
    ei = expected_improvement(mean, sd, best=0.0)
    # E[max(X - best, 0)] for X ~ N(mean, sd): sd * (z Phi(z) + phi(z)), z = (mean - best) / sd
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    wanted = [s * ((m / s) * Phi(m / s) + phi(m / s)) for m, s in zip(mean, sd)]
    assert ei == pytest.approx(wanted, rel=1e-12)
    assert ei[0] == pytest.approx(1 / math.sqrt(2 * math.pi)) and ei[3] == pytest.approx(2.0, abs=1e-4)


# Eight evaluations spread over the space; accuracy is high exactly where d0 is "c".
DESIGN = ["aaaa", "bbbb", "cccc", "dddd", "abcd", "badc", "cdab", "dcba"]


def accuracy(code: str) -> float:
    return 60.0 + 10.0 * (code[0] == "c") + 0.5 * (code[1] == "a") - 0.3 * (code[2] == "d")


def test_after_the_design_the_model_proposes_where_the_evaluations_were_good():
    ctx = context([(code, accuracy(code)) for code in DESIGN])
    picks = []
    for _ in range(4):
        arch = PriorGuidedProposer(seed=3).propose(ctx)
        picks.append(arch.code)
        ctx.history.append({"arch": arch.code, "metric": accuracy(arch.code), "meets_budgets": True})
    assert all(code[0] == "c" for code in picks), picks  # the decision that matters, learnt from 2 of 8
    assert len(set(picks) | set(DESIGN)) == len(DESIGN) + 4  # never one already evaluated


def test_the_model_follows_capacity_when_the_evaluations_say_it_pays():
    # No decision matters by itself here: accuracy rises with the number of "d" options (the capacity).
    capacity = lambda arch: (10.0 ** (1 + convs(arch)), 10.0 ** (1 + convs(arch)))  # noqa: E731
    design = ["aaaa", "abca", "dbca", "adbd", "ddab", "cdbd", "bddd", "abcb"]
    ctx = context([(code, 50.0 + 5.0 * code.count("d")) for code in design], capacity)
    proposer = PriorGuidedProposer(seed=0, top_fraction=1.0)  # the whole space: the model alone chooses
    assert proposer.propose(ctx).code == "dddd"


@pytest.mark.parametrize("seed", [0, 7])
def test_a_proposal_is_a_function_of_seed_and_history(seed):
    history = [(code, accuracy(code)) for code in DESIGN + ["caab", "cbda"]]
    first = PriorGuidedProposer(seed=seed).propose(context(history)).code
    used = PriorGuidedProposer(seed=seed)
    used.propose(context(history[:9]))  # a proposer that has proposed before, on a shorter history
    assert used.propose(context(history)).code == first
    assert PriorGuidedProposer(seed=seed).propose(context(history)).code == first
