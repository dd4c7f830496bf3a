"""Checks for chapter 7 (downstream tasks)."""

from __future__ import annotations

import torch

from ..downstream import eval_chain, token_f1


def check_token_f1(fn) -> None:
    """``fn(prediction, truth) -> float`` must be SQuAD's token F1 (normalised bag of tokens)."""
    cases = [
        ("The Amber Heron.", "amber heron", 1.0),
        ("purple walrus", "purple walrus seventeen", 0.8),
        ("a blue giraffe on a bicycle", "blue giraffe", 2 / 3),
        ("nothing", "smoked cardamom", 0.0),
        ("walrus walrus", "walrus", 2 * 0.5 * 1 / 1.5),
    ]
    for pred, truth, want in cases:
        got = float(fn(pred, truth))
        assert abs(got - want) < 1e-6, (
            f"F1({pred!r}, {truth!r}) should be {want:.3f}, got {got:.3f}. Hint: lower-case, "
            "strip punctuation and the articles a/an/the, then count shared tokens with a "
            "Counter intersection (so a repeated word counts only as often as in both)."
        )
    assert abs(float(fn("Amber Heron", "amber heron")) - token_f1("Amber Heron", "amber heron")) < 1e-9
    print("✓ token F1 is correct")


def check_random_heads(fn) -> None:
    """``fn(scores, k, seed) -> list[(layer, head)]``: seeded, distinct, all scores < 0.1."""
    scores = torch.zeros(8, 5)
    scores[3, 2], scores[5, 0], scores[1, 4] = 0.8, 0.4, 0.12
    a = list(fn(scores, 6, 0))
    assert len(a) == 6 and len(set(map(tuple, a))) == 6, "draw k *distinct* heads"
    assert all(float(scores[l, h]) < 0.1 for l, h in a), (
        "a random control must not contain retrieval heads: draw only among heads scoring < 0.1")
    assert list(fn(scores, 6, 0)) == a, "the same seed must give the same heads"
    assert list(fn(scores, 6, 1)) != a, "different seeds should give different draws"
    print("✓ random heads are seeded and exclude retrieval heads")


def check_eval_chain(fn) -> None:
    """``fn(lines) -> dict[var, int]`` executes ``"b = a + 3"`` style assignments."""
    lines = ["a = 4", "k = 9", "b = a + 3", "c = b - 5", "z = k + c"]
    want = eval_chain(lines)
    got = dict(fn(lines))
    assert got == want, f"expected {want}, got {got}"
    print("✓ the chain is evaluated correctly")
