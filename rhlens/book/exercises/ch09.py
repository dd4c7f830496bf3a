"""Checks for chapter 9 (KV-cache compression)."""

from __future__ import annotations

import torch

from ...apps.kvcache import kv_cache_bytes, kv_heads_of, top_kv_heads
from .check import checker, expect, passed


@checker
def check_kv_heads_of(fn) -> None:
    """``fn(query_heads, n_heads, n_kv_heads) -> sorted list of (layer, kv_head)``."""
    cases = [
        ([(0, 0), (0, 2), (1, 8)], 9, 3),
        ([(3, 5), (3, 4)], 8, 2),
        ([(2, 1), (2, 3)], 4, 4),
        ([], 9, 3),
    ]
    for heads, n, k in cases:
        want, got = kv_heads_of(heads, n, k), sorted(map(tuple, fn(heads, n, k)))
        expect(got == want, "KV heads of",
               f"query heads {heads} with {n} query / {k} KV heads: expected {want}, got {got}",
               "query head h reads KV head h // (n_heads // n_kv_heads); each KV head once")
    passed("KV heads of")


@checker
def check_kv_bytes(fn) -> None:
    """``fn(n_layers, n_kv_heads, d_head, n_tokens, n_full, sink, window) -> bytes kept (bf16)``."""
    for args in [(30, 3, 64, 1000, 0, 4, 60), (30, 3, 64, 1000, 9, 4, 28), (32, 8, 128, 4096, 20, 4, 1020),
                 (2, 2, 16, 10, 1, 4, 60)]:
        L, K, d, n, f, s, w = args
        want = kv_cache_bytes(L, K, d, n, [(i // K, i % K) for i in range(f)], s, w)["kept"]
        got = int(fn(*args))
        expect(got == want, "KV-cache bytes kept", f"{args}: expected {want} bytes, got {got}",
               "K and V, 2 bytes each, d_head values per token per KV head; compressed heads "
               "keep min(n_tokens, sink + window)")
    passed("KV-cache bytes kept")


def _scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(9)
    return torch.rand(6, 8, generator=g) * (torch.rand(6, 8, generator=g) > 0.7)


def _budget_reference(scores, n_kv_heads, d_head, n_tokens, budget, sink, window):
    n_layers = scores.shape[0]
    best = None
    for k in range(n_layers * n_kv_heads + 1):
        heads = top_kv_heads(scores, n_kv_heads, k)
        if kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, heads, sink, window)["kept"] > budget:
            break
        best = heads
    return best


@checker
def check_kv_budget(fn) -> None:
    """``fn(scores [L, H], n_kv_heads, d_head, n_tokens, budget, sink, window) -> [(layer,
    kv_head), ...]``: the most KV heads that can stay full within ``budget`` bytes (bf16 K and
    V), taken in the order of :func:`rhlens.apps.kvcache.top_kv_heads` (best retrieval score in
    the group first), the others keeping ``sink + window`` tokens; ValueError when even
    compressing every head does not fit."""
    scores = _scores()
    for n_kv, d, n, sink, window, share in [(2, 16, 1000, 4, 60, 0.3), (4, 16, 1000, 4, 60, 0.5),
                                            (8, 8, 500, 4, 28, 0.2), (2, 16, 50, 4, 60, 1.0),
                                            (4, 16, 4000, 4, 1020, 0.4)]:
        full = kv_cache_bytes(6, n_kv, d, n, compress_all=False)["full"]
        budget = int(share * full)
        want = _budget_reference(scores, n_kv, d, n, budget, sink, window)
        got = sorted((int(h[0]), int(h[1])) for h in fn(scores.clone(), n_kv, d, n, budget, sink, window))
        kept = kv_cache_bytes(6, n_kv, d, n, got, sink, window)["kept"]
        expect(kept <= budget, "KV budget",
               f"{n_kv} KV heads/layer, {n} tokens, budget {budget} B: your {len(got)} full heads "
               f"keep {kept} B", "count what the compressed heads keep too: min(n_tokens, sink + "
               "window) tokens each")
        expect(len(got) == len(want), "KV budget",
               f"{n_kv} KV heads/layer, {n} tokens, budget {budget} B: {len(got)} full KV heads, "
               f"the budget allows {len(want)}", "add full KV heads one at a time while the "
               "bytes kept stay <= budget (kv_cache_bytes)")
        expect(got == want, "KV budget", f"kept {got}, expected {want}",
               "rank KV heads by the best score among their query heads (top_kv_heads)")
    try:
        fn(scores.clone(), 2, 16, 1000, 10, 4, 60)
    except ValueError:
        pass
    else:
        expect(False, "KV budget", "a budget of 10 bytes was accepted",
               "raise ValueError when even compressing every KV head exceeds the budget")
    passed("KV budget")
