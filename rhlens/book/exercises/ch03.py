"""Checks for chapter 3 (sparsity and universality of retrieval heads)."""

from __future__ import annotations

import torch

from ...analyze.statistics import null_pearson, pearson
from ...score.heads import sparsity
from .check import checker, expect, passed


def _maps():
    g = torch.Generator().manual_seed(3)
    a = torch.zeros(6, 5)
    a.view(-1)[torch.randperm(30, generator=g)[:6]] = torch.rand(6, generator=g)
    b = torch.rand(6, 5, generator=g) * (torch.rand(6, 5, generator=g) > 0.5)
    return [a, b, torch.tensor([[0.0, 0.1, 0.5], [0.51, 0.09, 1.0]])]


@checker
def check_sparsity(fn) -> None:
    """``fn(scores [L, H]) -> dict`` with ``share_above_0.1``, ``share_above_0.5``,
    ``share_zero`` (fractions of all heads; strict ``>``, exact ``== 0``)."""
    for m in _maps():
        got, want = fn(m.clone()), sparsity(m)
        for key, value in want.items():
            expect(key in got, "sparsity", f"missing key {key!r}")
            expect(abs(float(got[key]) - value) < 1e-6, "sparsity",
                   f"{key}: got {float(got[key]):.4f}, expected {value:.4f}",
                   "the thresholds are strict (a head at exactly 0.1 is not above 0.1), and "
                   "shares are of ALL heads")
    passed("sparsity")


@checker
def check_pearson(fn) -> None:
    """``fn(a [L, H], b [L, H]) -> float``: Pearson correlation over all heads."""
    a, b, c = _maps()
    for x, y in [(a, b), (a, a * 2 + 0.1), (b, -b), (c, c.flip(0))]:
        got, want = float(fn(x.clone(), y.clone())), pearson(x, y)
        expect(abs(got - want) < 1e-5, "pearson", f"got {got:.4f}, expected {want:.4f}",
               "flatten both maps, subtract each mean, then divide the dot product by the "
               "product of the norms")
    passed("pearson")


def _p_value(a, b, n, seed) -> float:
    return float((null_pearson(a, b, n=n, seed=seed) >= pearson(a, b) - 1e-9).double().mean())


@checker
def check_shuffle_p_value(fn) -> None:
    """``fn(a, b, n, seed) -> float``: the share of ``n`` head-shuffles of ``b`` whose Pearson r
    with ``a`` reaches the observed r (the reference: :func:`rhlens.analyze.statistics.null_pearson`).

    A different random generator gives a slightly different share, so answers agree within
    0.04 at n = 2000 (the sampling error is below 0.012)."""
    a, b, c = _maps()
    g = torch.Generator().manual_seed(7)
    near = a + 0.3 * torch.rand(a.shape, generator=g) * (a > 0)
    cases = [("a against itself", a, a), ("a against a noisy copy", a, near),
             ("two unrelated maps", a, b), ("a against its negative", a, -a)]
    for what, x, y in cases:
        want = _p_value(x, y, 2000, 0)
        got = float(fn(x.clone(), y.clone(), 2000, 0))
        expect(0 <= got <= 1, "shuffle p-value", f"{what}: {got} is not a share",
               "count the shuffles with r >= observed r and divide by n")
        expect(abs(got - want) < 0.04, "shuffle p-value",
               f"{what}: got {got:.3f}, expected about {want:.3f}",
               "shuffle the HEADS of b (a random permutation of b.flatten()), keep a fixed, "
               "and count r(a, shuffled b) >= r(a, b); a map against itself gives p near 0")
        again = float(fn(x.clone(), y.clone(), 2000, 0))
        expect(again == got, "shuffle p-value", f"{what}: the same seed gave {got} then {again}",
               "draw the permutations from torch.Generator().manual_seed(seed)")
    passed("shuffle p-value")
