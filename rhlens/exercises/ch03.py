"""Checks for chapter 3 (sparsity and universality of retrieval heads)."""

from __future__ import annotations

import torch

from ..heads import pearson, sparsity
from .check import expect, passed


def _maps():
    g = torch.Generator().manual_seed(3)
    a = torch.zeros(6, 5)
    a.view(-1)[torch.randperm(30, generator=g)[:6]] = torch.rand(6, generator=g)
    b = torch.rand(6, 5, generator=g) * (torch.rand(6, 5, generator=g) > 0.5)
    return [a, b, torch.tensor([[0.0, 0.1, 0.5], [0.51, 0.09, 1.0]])]


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


def check_pearson(fn) -> None:
    """``fn(a [L, H], b [L, H]) -> float``: Pearson correlation over all heads."""
    a, b, c = _maps()
    for x, y in [(a, b), (a, a * 2 + 0.1), (b, -b), (c, c.flip(0))]:
        got, want = float(fn(x.clone(), y.clone())), pearson(x, y)
        expect(abs(got - want) < 1e-5, "pearson", f"got {got:.4f}, expected {want:.4f}",
               "flatten both maps, subtract each mean, then divide the dot product by the "
               "product of the norms")
    passed("pearson")
