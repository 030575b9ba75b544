"""``prior-bo``: the offline default proposer, built for 10 to 20 evaluations.

Latency, FLOPs and parameters of every candidate are known before it is evaluated; only
accuracy costs. So:

1. Candidates: every architecture of the space when it is small enough to list (NAS-Bench-201:
   15,625), else a seeded pool of random ones plus the neighbours of the best evaluated; those
   that cannot meet the budgets are dropped before anything is evaluated.
2. Prior: among them, the top 5 % by capacity (FLOPs, then parameters; with every candidate
   tied with the last, since the prior cannot tell them apart): within a budget, more
   computation is the usual way to more accuracy, a prior that costs nothing (FLOPs and
   parameter counts are the classic zero-cost baselines). The prior set widens (doubling) once
   it is used up.
3. Design: the first evaluations are spread over the prior set: each next one is the candidate
   farthest (in decisions that differ) from everything evaluated so far. No random warm-up.
4. Model: then a Gaussian process on the evaluations (a kernel on the decisions that differ plus
   a linear kernel on log FLOPs and log parameters) picks the candidate of highest expected
   improvement in the prior set. Its few lines are written here on purpose: scikit-learn's
   GaussianProcessRegressor (one-hot decisions plus the capacity features; RBF + white noise,
   with or without a linear kernel; hyperparameters fitted by marginal likelihood at every
   proposal) was measured against it on benchmarks/proposer_regret.py's 8 rows with 50 seeds
   (issue 15). Its regret minus this one's, mean over the rows, in points: RBF -0.04 ± 0.07 at
   10 and at 20 evaluations; RBF + linear -0.05 ± 0.05 at 10 and +0.11 ± 0.06 at 20 - no gain,
   at 2 to 18 times the wall time per proposal and with scipy and scikit-learn as new
   dependencies. 8 to 20 evaluations are too few to fit hyperparameters that beat fixed ones.

Every proposal is a function of (seed, history) only, so a resumed search proposes what an
uninterrupted one would have. The numbers (5 %, 8 design points, length scale half the
decisions) are general defaults, not fitted to one benchmark: benchmarks/proposer_regret.py
measures them on NAS-Bench-201 and on held-out devices.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from pathnas.spaces import Architecture, ArchitectureError, SearchSpace

from .proposers import NoProposal, RandomProposer, SearchContext, stream_seed

ENUMERATE_MAX = 50_000  # spaces up to this size are listed whole


def option_indices(space: SearchSpace, arch: Architecture) -> list[int]:
    """The index of each decision's option (-1 where a decision does not apply)."""
    return [-1 if v is None else d.values.index(v) for d, v in zip(space.decisions, arch.values)]


def enumerate_space(space: SearchSpace, limit: int = ENUMERATE_MAX) -> list[Architecture] | None:
    """Every architecture of a space with no conditional decisions, when there are at most ``limit``."""
    if space.size() > limit:
        return None
    out = []
    for values in itertools.product(*(d.values for d in space.decisions)):
        try:
            out.append(space.from_values(list(values)))
        except ArchitectureError:  # a conditional space: listing it needs its rule
            return None
    return out


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """E[max(Y - best, 0)] for Y ~ N(mean, sd^2); the normal CDF is torch's (the search's one numeric
    library beside numpy)."""
    z = (mean - best) / sd
    cdf = torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()
    return (mean - best) * cdf + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


class _Candidates:
    """The pool, its option indices and capacity features, ranked by capacity (most first)."""

    def __init__(self, archs: list[Architecture], space: SearchSpace, capacity):
        caps = np.array([capacity(a) for a in archs], dtype=float).reshape(len(archs), 2)
        order = np.lexsort((-caps[:, 1], -caps[:, 0]))  # FLOPs, then parameters, descending
        self.archs = [archs[i] for i in order]
        self.codes = {a.code: i for i, a in enumerate(self.archs)}
        self.X = np.array([option_indices(space, a) for a in self.archs], dtype=np.int16).reshape(len(archs),
                                                                                                    len(space))
        self.caps = caps[order]
        logs = np.log(np.maximum(self.caps, 1.0))
        self.center, self.scale = logs.mean(0), np.where(logs.std(0) > 0, logs.std(0), 1.0)
        self.F = (logs - self.center) / self.scale

    def top(self, count: int) -> int:
        """How many lead the ranking when the first ``count`` are wanted: the prior cannot tell candidates
        of equal capacity apart, so those tied with the last one come too (never an arbitrary cut)."""
        if count >= len(self.archs):
            return len(self.archs)
        last = self.caps[count - 1]
        return int(np.sum(np.all(self.caps >= last, axis=1) | (self.caps[:, 0] > last[0])))

    def features(self, space: SearchSpace, arch: Architecture, capacity) -> tuple[np.ndarray, np.ndarray]:
        i = self.codes.get(arch.code)
        if i is not None:
            return self.X[i], self.F[i]
        logs = np.log(np.maximum(np.array(capacity(arch), dtype=float), 1.0))
        return np.array(option_indices(space, arch), dtype=np.int16), (logs - self.center) / self.scale


class PriorGuidedProposer:
    name = "prior-bo"

    def __init__(self, seed: int = 0, top_fraction: float = 0.05, min_top: int = 32, design: int = 8,
                 pool: int = 4096, noise: float = 1e-2):
        self.seed, self.top_fraction, self.min_top, self.design = seed, top_fraction, min_top, design
        self.pool, self.noise = pool, noise
        self._infeasible: set[str] = set()  # exact checks that failed (deterministic, so only a cache)

    # -- the candidates -------------------------------------------------------------------
    def _capacity(self, ctx: SearchContext):
        return ctx.capacity or (lambda arch: (0.0, 0.0))

    def _base(self, ctx: SearchContext) -> _Candidates:
        key = ("prior-bo", self.seed, self.pool)  # the context's budgets and space are fixed for its life
        if key not in ctx.cache:
            archs = ctx.listed()
            if archs is None:
                gen = RandomProposer.generator(self.seed, 11, 0)
                check = ctx.maybe_feasible or ctx.feasible
                sampled = {a.code: a for a in (ctx.space.sample(gen) for _ in range(self.pool))}
                archs = [a for a in sampled.values() if check(a)]
            ctx.cache[key] = _Candidates(archs, ctx.space, self._capacity(ctx))
        return ctx.cache[key]

    def _neighbours(self, ctx: SearchContext, base: _Candidates) -> list[Architecture]:
        """For a sampled pool: one-decision changes of the best evaluated (where the model may look next)."""
        if ctx.listed() is not None:
            return []
        check = ctx.maybe_feasible or ctx.feasible
        out = {}
        for r in ctx.ranked()[:3]:
            for arch in ctx.space.mutate_candidates(ctx.space.decode(r["arch"])):
                if arch.code not in base.codes and check(arch):
                    out[arch.code] = arch
        return list(out.values())

    # -- proposing ------------------------------------------------------------------------
    def propose(self, ctx: SearchContext) -> Architecture:
        base = self._base(ctx)
        capacity = self._capacity(ctx)
        taken = ctx.evaluated() | {r["arch"] for r in ctx.rejected} | self._infeasible
        rng = np.random.default_rng(stream_seed(self.seed, 12, len(ctx.history)))
        extra = self._neighbours(ctx, base)
        n = len(base.archs)
        wanted = max(self.min_top, math.ceil(self.top_fraction * n))
        while True:
            pool = [i for i in range(base.top(wanted)) if base.archs[i].code not in taken]
            pool_archs = [base.archs[i] for i in pool] + [a for a in extra if a.code not in taken]
            if pool_archs or wanted >= n:
                break
            wanted *= 2  # the prior set is used up: widen it
        if not pool_archs:
            raise NoProposal("every candidate that can meet the budgets was evaluated or ruled out")
        rows = np.array(pool, dtype=int)
        more = [base.features(ctx.space, a, capacity) for a in pool_archs[len(pool):]]
        more_X = np.array([m[0] for m in more], dtype=np.int16).reshape(len(more), base.X.shape[1])
        X = np.concatenate([base.X[rows], more_X])
        F = np.concatenate([base.F[rows], np.array([m[1] for m in more]).reshape(len(more), 2)])
        evaluated = [ctx.space.decode(r["arch"]) for r in ctx.history]
        if len(ctx.history) < self.design or len(evaluated) < 2:
            score = self._spread(X, evaluated, ctx, base, capacity, rng)
        else:
            score = self._expected_improvement(X, F, evaluated, ctx, base, capacity)
        # best score first; ties in a random (seeded) order
        order = np.lexsort((rng.random(len(score)), -score))
        for i in order:
            arch = pool_archs[i]
            if ctx.feasible(arch):
                return arch
            self._infeasible.add(arch.code)
        raise NoProposal("no candidate of the prior set meets the budgets exactly")

    def _spread(self, X, evaluated, ctx, base, capacity, rng) -> np.ndarray:
        """Distance (decisions that differ) to the nearest evaluated architecture."""
        if not evaluated:
            return np.zeros(len(X))
        E = np.array([base.features(ctx.space, a, capacity)[0] for a in evaluated], dtype=np.int16)
        return (X[:, None, :] != E[None, :, :]).sum(-1).min(1).astype(float)

    def _expected_improvement(self, X, F, evaluated, ctx, base, capacity) -> np.ndarray:
        feats = [base.features(ctx.space, a, capacity) for a in evaluated]
        E = np.array([f[0] for f in feats], dtype=np.int16)
        G = np.array([f[1] for f in feats])
        y = np.array([r["metric"] for r in ctx.history], dtype=float)
        y = (y - y.mean()) / (y.std() if y.std() > 0 else 1.0)
        scale = max(1.0, X.shape[1] / 2)  # differing decisions at which similarity falls to 1/e

        def kernel(A, FA, B, FB):
            return np.exp(-(A[:, None, :] != B[None, :, :]).sum(-1) / scale) + FA @ FB.T / FA.shape[1]

        K = kernel(E, G, E, G) + self.noise * np.eye(len(E))
        L = np.linalg.cholesky(K)
        alpha = np.linalg.solve(L.T, np.linalg.solve(L, y))
        Ks = kernel(X, F, E, G)
        mean = Ks @ alpha
        v = np.linalg.solve(L, Ks.T)
        prior_var = 1.0 + (F * F).sum(1) / F.shape[1]
        sd = np.sqrt(np.clip(prior_var - (v * v).sum(0), 1e-12, None))
        return expected_improvement(mean, sd, y.max())
