"""Checks for chapter 02, "Finding retrieval heads"."""

from __future__ import annotations

import torch

from ...score.scoring import copy_hits, retrieval_scores
from .check import COPY_PROMPT, COPY_SPAN, checker, expect, fail, passed, tiny


def _cases():
    g = torch.Generator().manual_seed(0)
    yield torch.tensor([[2, 6, 0]]), 11
    yield torch.tensor([[1, 1], [5, 4]]), 10
    for _ in range(20):
        argmax = torch.randint(0, 8, (3, 4), generator=g)
        token = int(COPY_PROMPT[torch.randint(0, 7, (1,), generator=g)])
        yield argmax, token


@checker
def check_copy_hits(fn) -> None:
    """``fn(argmax [L, H], token, prompt_ids [n], needle_span) -> bool [L, H]``."""
    for argmax, token in _cases():
        got = torch.as_tensor(fn(argmax, token, COPY_PROMPT, COPY_SPAN)).bool()
        want = copy_hits(argmax, token, COPY_PROMPT, COPY_SPAN)
        expect(got.shape == want.shape, "copy_hits",
               f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        expect(torch.equal(got, want), "copy_hits",
               f"argmax={argmax.tolist()}, token={token}: got {got.tolist()}, expected "
               f"{want.tolist()}", "position 6 holds token 11 too, but lies outside the needle")
    passed("copy_hits")


@checker
def check_retrieval_scores(fn) -> None:
    """``fn(argmax [T, L, H], tokens [T], prompt_ids, needle_span) -> [L, H]`` (paper mode)."""
    g = torch.Generator().manual_seed(1)
    # a head that copies needle position 2 twice, and one that copies all four positions
    fixed = (torch.tensor([[[2, 1, 0]], [[2, 2, 6]], [[3, 3, 3]], [[4, 4, 4]]]),
             torch.tensor([11, 11, 12, 13]))
    cases = [fixed]
    for _ in range(20):
        T = int(torch.randint(1, 7, (1,), generator=g))
        argmax = torch.randint(0, 8, (T, 2, 3), generator=g)
        cases.append((argmax, COPY_PROMPT[torch.randint(0, 7, (T,), generator=g)]))
    for argmax, tokens in cases:
        want = retrieval_scores(argmax, tokens, COPY_PROMPT, COPY_SPAN)
        got = torch.as_tensor(fn(argmax, tokens, COPY_PROMPT, COPY_SPAN)).to(want.dtype)
        expect(got.shape == want.shape, "retrieval_scores",
               f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if not torch.allclose(got, want, atol=1e-6):
            summed = retrieval_scores(argmax, tokens, COPY_PROMPT, COPY_SPAN, score_mode="sum")
            hint = ("you are summing every copying step (the public code's arithmetic): count "
                    "each needle position once" if torch.allclose(got, summed)
                    else "a head scores the share of distinct needle positions it copied")
            fail("retrieval_scores", f"got {got.tolist()}, expected {want.tolist()}", hint)
    passed("retrieval_scores")


@checker
def check_argmax_hook(fn) -> None:
    """``fn(pattern, hook, store) -> None``: a decode-step hook on ``blocks.{l}.attn.hook_pattern``
    that appends to ``store[layer]`` the ``[n_heads]`` argmax key of each query head's last row.

    Run inside :func:`rhlens.greedy_decode` on a tiny grouped-query model (4 query heads, 2 KV
    heads) and compared with the argmaxes the decoder records itself.
    """
    from ...run.decode import greedy_decode

    model = tiny("llama")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    ids = torch.randint(5, 2000, (24,), generator=torch.Generator().manual_seed(2))
    store: dict = {}

    def hook(pattern, hook):
        fn(pattern, hook, store)
        return pattern

    trace = greedy_decode(model, ids, max_new_tokens=6, stop_at_newline=False,
                          decode_hooks=[(lambda name: name.endswith("hook_pattern"), hook)])
    steps = trace.argmax.shape[0]
    layers = sorted(int(k) for k in store)
    expect(layers == list(range(n_layers)), "argmax hook",
           f"store has layers {layers}, expected {list(range(n_layers))}",
           "key the store by hook.layer() (or the number in hook.name), one list per layer")
    for layer in range(n_layers):
        rows = store[layer]
        expect(len(rows) >= steps, "argmax hook",
               f"layer {layer}: {len(rows)} entries for {steps} decode steps",
               "append one entry per call: the hook runs once per layer per decode step")
        got = [torch.as_tensor(r).flatten() for r in rows[:steps]]
        expect(all(g.shape == (n_heads,) for g in got), "argmax hook",
               f"layer {layer}: entries of shape {tuple(got[0].shape)}, expected ({n_heads},)",
               "pattern is [batch, head, query, key]: take batch 0, every head, the LAST query "
               "row, and argmax over the key axis (one key per query head, also under GQA)")
        want = trace.argmax[:, layer]
        stacked = torch.stack(got).long()
        expect(torch.equal(stacked, want), "argmax hook",
               f"layer {layer}: got {stacked.tolist()}, the decoder recorded {want.tolist()}",
               "argmax over the last axis (keys) of pattern[0, :, -1]")
    passed("argmax hook", f"{steps} decode steps x {n_layers} layers x {n_heads} query heads")
