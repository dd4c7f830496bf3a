"""Checks for chapter 4 (causality: masking retrieval heads)."""

from __future__ import annotations

import torch


def check_uniform_scores(fn) -> None:
    """``fn(scores, heads) -> scores``: make the query heads ``heads`` attend uniformly.

    ``scores`` is ``[batch, head, query, key]`` with hidden (future) keys already at the
    dtype's minimum; only the visible entries of the chosen heads may change.
    """
    torch.manual_seed(0)
    n = 5
    neg = torch.finfo(torch.float32).min
    scores = torch.randn(1, 3, n, n)
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), neg)
    out = fn(scores.clone(), [1])
    assert out.shape == scores.shape, f"keep the shape {tuple(scores.shape)}, got {tuple(out.shape)}"
    assert torch.equal(out[:, [0, 2]], scores[:, [0, 2]]), "heads 0 and 2 were not masked: leave them alone"
    pattern = out[0, 1].softmax(-1)
    expected = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    assert torch.allclose(pattern, expected, atol=1e-6), (
        "after softmax, query i of the masked head should give 1/(i+1) to keys 0..i and 0 to "
        "future keys: set only the visible scores to a constant and keep the causal mask")
    print("check_uniform_scores: correct, the causal mask survives.")


def check_random_heads(fn) -> None:
    """``fn(scores, k, seed, threshold) -> [(layer, head), ...]``: seeded, non-retrieval."""
    scores = torch.zeros(4, 5)
    scores[0, 1], scores[2, 2], scores[3, 4], scores[1, 0] = 0.8, 0.3, 0.11, 0.1
    retrieval = {(0, 1), (2, 2), (3, 4)}
    for seed in range(10):
        heads = [tuple(map(int, h)) for h in fn(scores, 6, seed, 0.1)]
        assert len(heads) == 6 and len(set(heads)) == 6, "draw k distinct heads"
        assert not retrieval & set(heads), (
            f"seed {seed} drew retrieval heads {retrieval & set(heads)}: draw only from heads "
            "scoring <= threshold")
        again = [tuple(map(int, h)) for h in fn(scores, 6, seed, 0.1)]
        assert heads == again, "the same seed must give the same heads (use torch.Generator)"
    draws = {tuple(fn(scores, 6, s, 0.1)) for s in range(10)}
    assert len(draws) > 5, "different seeds should give different draws"
    print("check_random_heads: correct, seeded and never a retrieval head.")
