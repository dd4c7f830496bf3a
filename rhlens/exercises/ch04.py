"""Checks for chapter 4 (causality: masking retrieval heads)."""

from __future__ import annotations

import torch

from ..ablation import Mask
from ..heads import control_pool
from .check import expect, passed


def check_uniform_scores(fn) -> None:
    """``fn(scores, heads) -> scores``: make the query heads ``heads`` attend uniformly.

    ``scores`` is ``[batch, head, query, key]`` with hidden (future) keys already at the
    dtype's minimum; only the visible entries of the chosen heads may change. The reference is
    the hook of ``Mask(heads, "uniform")``.
    """
    torch.manual_seed(0)
    n = 5
    neg = torch.finfo(torch.float32).min
    scores = torch.randn(1, 3, n, n)
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), neg)
    out = fn(scores.clone(), [1])
    ((_, reference),) = Mask([(0, 1)], "uniform").hooks(n_heads=3)
    want = reference(scores.clone(), None)
    expect(out.shape == scores.shape, "uniform scores",
           f"keep the shape {tuple(scores.shape)}, got {tuple(out.shape)}")
    expect(torch.equal(out[:, [0, 2]], scores[:, [0, 2]]), "uniform scores",
           "heads 0 and 2 changed", "only the masked head's scores may change")
    expect(torch.allclose(out[0, 1].softmax(-1), want[0, 1].softmax(-1), atol=1e-6),
           "uniform scores", "the masked head's pattern is not uniform over the visible keys",
           "after softmax, query i should give 1/(i+1) to keys 0..i and 0 to future keys: set "
           "only the visible scores to a constant and keep the causal mask")
    passed("uniform scores", "the causal mask survives")


def check_random_heads(fn) -> None:
    """``fn(scores, k, seed, threshold) -> [(layer, head), ...]``: seeded, distinct, and drawn
    only from the control pool (heads scoring ``<= threshold``, :func:`rhlens.heads.control_pool`)."""
    scores = torch.zeros(4, 5)
    scores[0, 1], scores[2, 2], scores[3, 4], scores[1, 0] = 0.8, 0.3, 0.11, 0.1
    pool = set(control_pool(scores, 0.1))
    for seed in range(10):
        heads = [tuple(map(int, h)) for h in fn(scores, 6, seed, 0.1)]
        expect(len(heads) == 6 and len(set(heads)) == 6, "random heads",
               f"seed {seed} gave {heads}", "draw k distinct heads")
        expect(set(heads) <= pool, "random heads",
               f"seed {seed} drew retrieval heads {set(heads) - pool}",
               "draw only from heads scoring <= threshold (a head at exactly 0.1 is allowed)")
        again = [tuple(map(int, h)) for h in fn(scores, 6, seed, 0.1)]
        expect(heads == again, "random heads", f"seed {seed} gave two different draws",
               "the same seed must give the same heads (use a torch.Generator)")
    draws = {tuple(map(tuple, fn(scores, 6, s, 0.1))) for s in range(10)}
    expect(len(draws) > 5, "random heads", f"10 seeds gave only {len(draws)} different draws",
           "different seeds should give different draws")
    passed("random heads", "seeded and never a retrieval head")
