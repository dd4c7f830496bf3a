"""Checks for chapter 4 (causality: masking retrieval heads)."""

from __future__ import annotations

import torch

from ...intervene.mask import Mask
from ...score.heads import control_pool
from .check import checker, expect, passed, tiny


@checker
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
    ((_, reference),) = Mask(((0, 1),), "uniform").hooks(n_heads=3)
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


def _fair_scores() -> torch.Tensor:
    scores = torch.zeros(5, 4)
    scores[1, 2], scores[3, 0], scores[3, 3], scores[1, 0] = 0.8, 0.3, 0.11, 0.1
    return scores


@checker
def check_fair_controls(fn) -> None:
    """``fn(scores, k, seeds, threshold) -> [[(layer, head), ...] per seed]``: one draw of ``k``
    distinct control heads per seed, only among heads scoring ``<= threshold`` in the layers
    that hold a retrieval head (:func:`rhlens.score.heads.control_pool` with ``same_layers=True``)."""
    scores = _fair_scores()
    pool = set(control_pool(scores, 0.1, same_layers=True))      # 5 heads in layers 1 and 3
    everywhere = set(control_pool(scores, 0.1))
    seeds = list(range(8))
    draws = [[tuple(map(int, h)) for h in d] for d in fn(scores.clone(), 4, seeds, 0.1)]
    expect(len(draws) == len(seeds), "fair controls",
           f"{len(seeds)} seeds gave {len(draws)} draws", "one draw per seed, in the seeds' order")
    for seed, heads in zip(seeds, draws):
        expect(len(heads) == 4 and len(set(heads)) == 4, "fair controls",
               f"seed {seed} gave {heads}", "draw k distinct heads")
        retrieval = set(heads) - everywhere
        expect(not retrieval, "fair controls", f"seed {seed} drew retrieval heads {retrieval}",
               "draw only heads scoring <= threshold (a head at exactly 0.1 is allowed)")
        elsewhere = set(heads) - pool
        expect(not elsewhere, "fair controls",
               f"seed {seed} drew {sorted(elsewhere)}, outside the retrieval heads' layers",
               "draw only in layers that hold a retrieval head (here layers 1 and 3): a head of "
               "another layer is not a like-for-like control")
    again = [[tuple(map(int, h)) for h in d] for d in fn(scores.clone(), 4, seeds, 0.1)]
    expect(again == draws, "fair controls", "the same seeds gave different draws",
           "seed each draw with torch.Generator().manual_seed(seed)")
    expect(len({frozenset(d) for d in draws}) > 1, "fair controls",
           "every seed drew the same heads", "different seeds should give different draws")
    passed("fair controls", "same layers, never a retrieval head, one seeded draw per seed")


@checker
def check_masked_class(fn) -> None:
    """``fn(model, input_ids, answer, mask, max_new_tokens) -> "complete" | "incomplete" |
    "hallucinated"``: decode with ``mask`` (a :class:`rhlens.Mask`) and classify the answer
    (:func:`rhlens.niah.answers.classify_answer`).

    On a tiny random model, whose own unmasked answer plays the needle's answer, zeroing 0, 2
    and all 8 heads gives the three classes in turn (at random weights attention is close to
    uniform already, so the uniform mask would change nothing there)."""
    from ...niah.answers import classify_answer
    from ...run.decode import greedy_decode

    model = tiny("llama")
    ids = torch.randint(5, 2000, (32,), generator=torch.Generator().manual_seed(0))
    unmasked = greedy_decode(model, ids, max_new_tokens=8).text
    every = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    for heads in ([], every[:2], every):
        mask = Mask(tuple(heads), "zero")
        masked = greedy_decode(model, ids, max_new_tokens=8, mask=mask).text
        want = classify_answer(unmasked, masked)
        got = fn(model, ids.clone(), unmasked, mask, 8)
        expect(got == want, "masked class",
               f"with {len(heads)} heads zeroed the answer {masked!r} against {unmasked!r} is "
               f"{want!r}, got {got!r}",
               "decode with greedy_decode(model, input_ids, max_new_tokens=..., mask=mask) and "
               "classify its text with classify_answer(answer, text)")
    passed("masked class", "complete, incomplete and hallucinated all recognised")
