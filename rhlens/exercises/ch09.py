"""Checks for chapter 9 (KV-cache compression)."""

from __future__ import annotations

from ..kvcache import kv_cache_bytes, kv_heads_of
from .check import expect, passed


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
